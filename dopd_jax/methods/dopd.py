"""Dual on-policy distillation (DOPD, methods.md section 4; design contract 2).

Per token, the gap between the privileged teacher and the privileged student
routes supervision: full-vocabulary JS to the teacher where it has a real
skill edge (HT), light or weak top-K reverse KL elsewhere (LH, LL, HS). The
privileged student is the live student by default, or its frozen / EMA copy
(``priv_student``), one of the two robustness switches against the collapse
the monitor watches for; ``hs_target="teacher"`` is the other.

The paper's ablations are settings of this one method, not forks of its loss
(methods.md section 4; each is a field, so a variant is a config override):

  routing           the routing rule (``losses.rules``): ``dopd``, ``skill_and``
                    / ``skill_replace`` (the skill-gap guardrail, methods.md
                    section 10), ``uniform`` (w/o advantage-aware routing), or a
                    user rule ``package.module:NAME``
  regimes           the regimes trained (Table 6 subsets; Table 8 w/o
                    student-side = ("LH", "HT"), w/o teacher-side = ("LL", "HS"))
  adaptive_weights  False: every trained regime weighs 1 (Tables 6 and 7)
  objective         one divergence for every regime (Table 7; Table 8 w/o
                    adaptive objectives), or ``adaptive`` (the paper's table)
  granularity       full / topk / sampled for every regime (Table 7; Table 8
                    w/o adaptive strategies), or ``adaptive``
  privileged        False: both passes see x only (Table 8 w/o privileged input)

and the guardrails of methods.md section 10 (off by default): the skill-gap
rules above, and ``wrong_hint_cut`` < 1, which scores the teacher a third time
with a wrong hint p' (another row's p) and multiplies the loss weight of the
tokens whose contrast C = log T(y|x,p) - log T(y|x,p') is above its trimmed
batch mean ``C_bar`` (the teacher's confidence comes from this very hint) by
``wrong_hint_cut``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dopd_jax import losses
from dopd_jax.losses import routing, rules
from dopd_jax.losses.routing import GRANULARITIES, REGIMES
from dopd_jax.methods.base import (
    PRIV_STUDENT_MODES,
    BatchRefs,
    Method,
    Pass,
    check_choice,
    priv_student_pass,
)
from dopd_jax.methods.collapse_monitor import CollapseMonitor
from dopd_jax.methods.opd import TOPK_MODES


@dataclasses.dataclass(frozen=True)
class DOPDConfig:
    """Hyperparameters of DOPD (defaults: methods.md section 4)."""

    top_k: int = 128  # K of the top-K reverse-KL regimes (clamped to V)
    beta_light: float = 0.6  # weight of LH and HS
    beta_weak: float = 0.3  # weight of LL
    outlier_fraction: float = 0.05  # tail share dropped from the trimmed batch means
    topk_mode: str = "renormalize"
    hs_target: str = "priv_student"  # "priv_student" (paper) | "teacher"
    gap_threshold: float | None = None  # None: trimmed batch mean A_bar
    priv_student: str = "live"  # "live" | "frozen" | "ema"
    ema_decay: float = 0.99
    routing: str = "dopd"  # a rule in losses.rules.RULES or "package.module:NAME"
    regimes: tuple[str, ...] = REGIMES  # the regimes trained
    adaptive_weights: bool = True  # False: weight 1 for every trained regime
    objective: str = "adaptive"  # "adaptive" | "fkl" | "rkl" | "jsd" for every regime
    granularity: str = "adaptive"  # "adaptive" | "full" | "topk" | "sampled"
    privileged: bool = True  # False: teacher and student passes without p
    wrong_hint_cut: float = 1.0  # < 1: weight of hint-copying tokens (wrong-hint contrast)

    def __post_init__(self):
        check_choice("dopd topk_mode", self.topk_mode, TOPK_MODES)
        check_choice("dopd hs_target", self.hs_target, losses.HS_TARGETS)
        check_choice("dopd priv_student", self.priv_student, PRIV_STUDENT_MODES)
        check_choice("dopd objective", self.objective, ("adaptive", "fkl", "rkl", "jsd"))
        check_choice("dopd granularity", self.granularity, ("adaptive",) + GRANULARITIES)
        if self.granularity == "sampled" and self.objective not in ("fkl", "rkl"):
            raise ValueError(
                "dopd granularity='sampled' needs objective 'fkl' or 'rkl' (a JSD has no "
                f"single-sample form here), got objective={self.objective!r}"
            )
        bad = sorted(set(self.regimes) - set(REGIMES))
        if bad or not self.regimes:
            raise ValueError(f"dopd regimes must be a non-empty subset of {REGIMES}, got {bad}")
        if self.top_k < 1:
            raise ValueError(f"dopd top_k must be >= 1, got {self.top_k}")
        rules.get_rule(self.routing)  # unknown names fail here, listing the valid ones
        if not 0.0 <= self.wrong_hint_cut <= 1.0:
            raise ValueError(f"dopd wrong_hint_cut must be in [0, 1], got {self.wrong_hint_cut}")
        if self.wrong_hint_cut < 1.0 and not self.privileged:
            raise ValueError("dopd wrong_hint_cut contrasts two hints: it needs privileged=True")


def _slots(cfg: DOPDConfig) -> tuple[str, str]:
    """The (teacher, student-side target) slots: privileged, or plain passes."""
    if cfg.privileged:
        return "priv_teacher", "priv_student"
    return "teacher", "student" if cfg.priv_student == "live" else "ref"


def _needs_skill(cfg: DOPDConfig) -> bool:
    return "skill" in rules.NEEDS.get(cfg.routing, ())


def _passes(cfg: DOPDConfig) -> dict[str, Pass]:
    teacher, student = _slots(cfg)
    prefix = "x+p" if cfg.privileged else "x"
    passes = {
        teacher: Pass("teacher", prefix),
        student: dataclasses.replace(priv_student_pass(cfg.priv_student), prefix=prefix),
    }
    if _needs_skill(cfg):  # the skill gap: the teacher and the live student without p
        passes.update(teacher=Pass("teacher", "x"), student=Pass("student", "x"))
    if cfg.wrong_hint_cut < 1.0:  # the teacher given another row's p
        passes["wrongp_teacher"] = Pass("teacher", "x+p'")
    return passes


def regime_table(cfg: DOPDConfig) -> dict:
    """The paper's regime table with this config's ablation settings applied."""
    table = routing.dopd_regime_table(cfg.beta_light, cfg.beta_weak, cfg.hs_target)
    out = {}
    for name, r in table.items():
        out[name] = dataclasses.replace(
            r,
            kind=r.kind if cfg.objective == "adaptive" else cfg.objective,
            granularity=r.granularity if cfg.granularity == "adaptive" else cfg.granularity,
            weight=(r.weight if cfg.adaptive_weights else 1.0) if name in cfg.regimes else 0.0,
        )
    return out


def _extra_stats(cfg: DOPDConfig, targets, tokens_BT, chunk_size) -> dict:
    logp = lambda x: losses.sampled_logprobs(x, tokens_BT, chunk_size)  # noqa: E731
    out = {}
    if _needs_skill(cfg):
        out["skill"] = logp(targets["teacher"]) - logp(targets["student"])
    if cfg.wrong_hint_cut < 1.0:
        out["contrast"] = logp(targets["priv_teacher"]) - logp(targets["wrongp_teacher"])
    return out


def _contrast_weights(cfg: DOPDConfig, extra: dict, mask_BT, refs):
    """Per-token weights of the wrong-hint guardrail (None when off), its C_bar, metrics."""
    if cfg.wrong_hint_cut >= 1.0:
        return None, {}
    c = extra["contrast"]
    c_bar = refs["C_bar"] if refs else routing.trimmed_mean(c, mask_BT, cfg.outlier_fraction)
    copied = (c > c_bar).astype(jnp.float32)
    weights = 1.0 - (1.0 - cfg.wrong_hint_cut) * copied
    metrics = {
        "C_bar": c_bar,
        "contrast_mean": losses.token_mean(c, mask_BT),
        "cut_frac": losses.token_mean(copied, mask_BT),
    }
    return weights, metrics


def _loss(student_BTV, targets, ro, cfg: DOPDConfig, *, chunk_size=None, refs=None):
    teacher, student = _slots(cfg)
    extra = _extra_stats(cfg, targets, ro.tokens_BT, chunk_size)
    weights, contrast_metrics = _contrast_weights(cfg, extra, ro.mask_BT, refs)
    rule_refs = None if refs is None else {k: v for k, v in refs.items() if k != "C_bar"}
    loss, metrics = losses.dopd_loss(
        student_BTV,
        targets[student],
        targets[teacher],
        ro.tokens_BT,
        ro.mask_BT,
        top_k=cfg.top_k,
        beta_light=cfg.beta_light,
        beta_weak=cfg.beta_weak,
        outlier_fraction=cfg.outlier_fraction,
        topk_mode=cfg.topk_mode,
        hs_target=cfg.hs_target,
        gap_threshold=None if refs else cfg.gap_threshold,
        chunk_size=chunk_size,
        refs=rule_refs,
        rule=rules.get_rule(cfg.routing),
        extra_stats=extra,
        regime_table=regime_table(cfg),
        token_weights=weights,
    )
    return loss, dict(metrics, **contrast_metrics)


def _ref_stats(cfg: DOPDConfig, targets, tokens_BT, chunk_size) -> dict:
    teacher, student = _slots(cfg)
    stats = routing.privilege_stats(targets[student], targets[teacher], tokens_BT, chunk_size)
    stats.update(_extra_stats(cfg, targets, tokens_BT, chunk_size))
    return stats


def _reduce_refs(cfg: DOPDConfig, stats_NT: dict, mask_NT) -> dict:
    _, refs = rules.get_rule(cfg.routing)(
        stats_NT,
        mask_NT,
        outlier_fraction=cfg.outlier_fraction,
        gap_threshold=cfg.gap_threshold,
    )
    if cfg.wrong_hint_cut < 1.0:
        refs = dict(
            refs, C_bar=routing.trimmed_mean(stats_NT["contrast"], mask_NT, cfg.outlier_fraction)
        )
    return refs


DOPD = Method(
    name="dopd",
    label="DOPD",
    config_cls=DOPDConfig,
    passes=_passes,
    loss=_loss,
    main_target=lambda cfg: _slots(cfg)[0],
    requires=("privileged",),
    batch_refs=BatchRefs(stats=_ref_stats, reduce=_reduce_refs),
    monitor=CollapseMonitor,
    description="dual on-policy distillation, advantage-gated routing",
)
