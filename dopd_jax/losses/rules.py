"""Routing rules: per-token statistics -> DOPD regimes, one function each.

A rule is ``rule(stats, mask_BT, *, refs=None, outlier_fraction=0.05,
gap_threshold=None) -> (regimes, refs)``:

  stats    dict of stop-gradient ``[B, T]`` arrays: ``gap``, ``qS``, ``qT``,
           ``logqS``, ``logqT`` (the two privileged passes,
           ``routing.privilege_stats``) and, where the method scores them,
           ``skill`` = log T(y|x) - log S(y|x) (both without p) and
           ``contrast`` = log T(y|x,p) - log T(y|x,p') (a wrong hint p')
  regimes  ``{"LH", "LL", "HT", "HS"} -> float 0/1 [B, T]`` partitioning the
           valid tokens
  refs     the scalar batch reference values the rule compared against; given
           back as ``refs`` (computed over the whole batch) when the step sees
           one micro-batch at a time

Registered: ``dopd`` (the paper), ``skill_and`` (HT only where the teacher is
also ahead without p), ``skill_replace`` (the skill gap replaces the privilege
gap), ``uniform`` (no advantage-aware routing: every token HT). Any
``package.module:NAME`` with the same signature works too, so a rule can be
prototyped in a notebook on saved statistics and then named in a config.
"""

from __future__ import annotations

import jax.numpy as jnp

from dopd_jax import plugins
from dopd_jax.losses import routing


def dopd(stats, mask_BT, *, refs=None, outlier_fraction=0.05, gap_threshold=None):
    """The paper's rule (``routing.dopd_regimes``) on the privilege gap."""
    return routing.dopd_regimes(
        stats["gap"],
        stats["qS"],
        stats["qT"],
        mask_BT,
        outlier_fraction=outlier_fraction,
        gap_threshold=gap_threshold,
        refs=refs,
    )


def _need(stats, key: str, rule: str):
    if key not in stats:
        raise ValueError(
            f"routing rule {rule!r} needs the statistic {key!r}; given {sorted(stats)}"
        )
    return stats[key]


def _split_refs(refs, extra: str):
    if refs is None:
        return None, None
    base = {k: v for k, v in refs.items() if k in routing.REF_KEYS}
    return base, refs[extra]


def skill_and(stats, mask_BT, *, refs=None, outlier_fraction=0.05, gap_threshold=None):
    """DOPD's rule, except that a large-gap token where the teacher is ahead counts as
    skill (HT) only when its skill gap G is also at or above the trimmed batch mean
    ``G_bar``; the others go to the light teacher regime LH (methods.md section 10)."""
    skill = _need(stats, "skill", "skill_and")
    base_refs, g_bar = _split_refs(refs, "G_bar")
    regimes, out = dopd(
        stats,
        mask_BT,
        refs=base_refs,
        outlier_fraction=outlier_fraction,
        gap_threshold=gap_threshold,
    )
    if g_bar is None:
        g_bar = routing.trimmed_mean(skill, mask_BT, outlier_fraction)
    copied = regimes["HT"] * (skill < g_bar).astype(jnp.float32)
    regimes = dict(regimes, HT=regimes["HT"] - copied, LH=regimes["LH"] + copied)
    return regimes, dict(out, G_bar=g_bar)


def skill_replace(stats, mask_BT, *, refs=None, outlier_fraction=0.05, gap_threshold=None):
    """DOPD's regime tests with the skill gap G in place of the privilege gap A."""
    skill = _need(stats, "skill", "skill_replace")
    return dopd(
        dict(stats, gap=skill),
        mask_BT,
        refs=refs,
        outlier_fraction=outlier_fraction,
        gap_threshold=gap_threshold,
    )


def uniform(stats, mask_BT, *, refs=None, outlier_fraction=0.05, gap_threshold=None):
    """No advantage-aware routing (Table 8): every valid token is HT."""
    valid = (mask_BT > 0).astype(jnp.float32)
    zero = jnp.zeros_like(valid)
    return {"LH": zero, "LL": zero, "HT": valid, "HS": zero}, {}


RULES = {"dopd": dopd, "skill_and": skill_and, "skill_replace": skill_replace, "uniform": uniform}
NEEDS = {"skill_and": ("skill",), "skill_replace": ("skill",)}  # extra statistics


def get_rule(name: str):
    """A registered rule, or ``package.module:NAME``; ValueError lists the valid names."""
    if plugins.is_import_path(name):
        rule = plugins.load_object(name, "routing rule")
        if not callable(rule):
            raise ValueError(f"routing rule {name!r} is not callable")
        return rule
    if name not in RULES:
        raise ValueError(
            f"unknown routing rule {name!r}; valid: {sorted(RULES)} "
            "(or an import path 'package.module:NAME')"
        )
    return RULES[name]
