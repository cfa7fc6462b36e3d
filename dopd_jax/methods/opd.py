"""Vanilla on-policy distillation (T->S) and the privileged-teacher baseline (Priv.T->S).

Both score the student's own rollouts under one frozen teacher: without the
privileged context (``opd``) or with it (``privt``, the uniform-loss baseline
DOPD compares against). Loss forms (methods.md section 3): ``pg``, the
per-token advantage ``A_n = log T(y_n) - log S(y_n)`` as a policy gradient,
or ``analytic``, a divergence over the vocabulary.

Two diagnostics of the DOPD paper are settings here:
  prune           Fig. 4: drop ``prune_fraction`` of the valid tokens from the
                  loss: at ``random``, or those with the ``low_gap`` / ``high_gap``
                  privilege gap A = |log T(y|x,p) - log S(y|x,p)| (quantiles over
                  the whole batch; the privileged passes are scored for it)
  student_prefix  ``x+p`` trains (and samples from) the student given p:
                  Priv.T->Priv.S of the privilege-illusion figure
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dopd_jax import losses
from dopd_jax.losses import routing
from dopd_jax.methods.base import BatchRefs, Method, Pass, check_choice

DIVERGENCES = ("fkl", "rkl", "jsd")
TOPK_MODES = ("renormalize", "generalized")
PRUNE = ("none", "random", "low_gap", "high_gap")


@dataclasses.dataclass(frozen=True)
class OPDConfig:
    """Hyperparameters of OPD / Priv.T->S."""

    form: str = "pg"  # "pg" (per-token advantage) | "analytic" (divergence)
    kind: str = "rkl"  # analytic divergence: "fkl" | "rkl" | "jsd"
    beta: float = 0.5  # JSD mixing weight of the target
    top_k: int = 0  # analytic top-K; 0 = full vocabulary
    topk_mode: str = "renormalize"
    importance_weight: bool = False  # pg: sg[pi_student / pi_sampler] per token
    is_clip: tuple[float, float] | None = None  # truncate that weight to [lo, hi]
    adv_clip: float | None = None  # clip A_n to [-c, c]
    prune: str = "none"  # "none" | "random" | "low_gap" | "high_gap" (DOPD Fig. 4)
    prune_fraction: float = 0.2  # share of valid tokens dropped from the loss
    student_prefix: str = "x"  # "x+p": sample and train the student given p

    def __post_init__(self):
        check_choice("opd prune", self.prune, PRUNE)
        check_choice("opd student_prefix", self.student_prefix, ("x", "x+p"))
        if not 0.0 <= self.prune_fraction < 1.0:
            raise ValueError(f"opd prune_fraction must be in [0, 1), got {self.prune_fraction}")
        check_choice("opd form", self.form, ("pg", "analytic"))
        check_choice("opd kind", self.kind, DIVERGENCES)
        check_choice("opd topk_mode", self.topk_mode, TOPK_MODES)
        if self.top_k < 0:
            raise ValueError(f"opd top_k must be >= 0 (0 = full vocabulary), got {self.top_k}")
        if self.is_clip is not None and not self.importance_weight:
            raise ValueError(
                "opd is_clip truncates the importance weight: set importance_weight=True with it"
            )


def _gap_passes(cfg: OPDConfig) -> dict[str, Pass]:
    if cfg.prune not in ("low_gap", "high_gap"):
        return {}
    return {"priv_teacher": Pass("teacher", "x+p"), "priv_student": Pass("student", "x+p")}


def _gap(targets, tokens_BT, chunk_size) -> dict:
    stats = routing.privilege_stats(
        targets["priv_student"], targets["priv_teacher"], tokens_BT, chunk_size
    )
    return {"gap": stats["gap"]}


def _prune_threshold(cfg: OPDConfig, stats_NT: dict, mask_NT) -> dict:
    q = cfg.prune_fraction if cfg.prune == "low_gap" else 1.0 - cfg.prune_fraction
    return {"prune_gap": routing.percentile(stats_NT["gap"], mask_NT > 0, q)}


def _refs(cfg: OPDConfig) -> BatchRefs | None:
    if not _gap_passes(cfg):
        return None
    return BatchRefs(
        stats=lambda c, targets, tokens_BT, chunk: _gap(targets, tokens_BT, chunk),
        reduce=_prune_threshold,
    )


def pruned_mask(cfg: OPDConfig, targets, tokens_BT, mask_BT, chunk_size=None, refs=None):
    """The loss mask with ``cfg.prune``'s tokens dropped (``mask_BT`` when off)."""
    valid = jnp.asarray(mask_BT) > 0
    if cfg.prune == "none":
        return valid
    if cfg.prune == "random":  # a deterministic draw from the batch's tokens
        t = tokens_BT.shape[1]
        seed = jnp.sum(tokens_BT.astype(jnp.uint32) * (jnp.arange(t, dtype=jnp.uint32) + 1))
        key = jax.random.fold_in(jax.random.key(0), seed)
        return valid & (jax.random.uniform(key, tokens_BT.shape) >= cfg.prune_fraction)
    gap = _gap(targets, tokens_BT, chunk_size)["gap"]
    threshold = (refs or _prune_threshold(cfg, {"gap": gap}, valid))["prune_gap"]
    return valid & ((gap > threshold) if cfg.prune == "low_gap" else (gap < threshold))


def _loss(target: str):
    def loss(student_BTV, targets, ro, cfg: OPDConfig, *, chunk_size=None, refs=None):
        mask = pruned_mask(cfg, targets, ro.tokens_BT, ro.mask_BT, chunk_size, refs)
        out_loss, metrics = _unpruned(target, student_BTV, targets, ro, mask, cfg, chunk_size)
        if cfg.prune != "none":
            kept = mask.sum() / jnp.maximum((ro.mask_BT > 0).sum(), 1)
            metrics = dict(metrics, pruned_frac=1.0 - kept.astype(jnp.float32))
        return out_loss, metrics

    return loss


def _unpruned(target, student_BTV, targets, ro, mask, cfg: OPDConfig, chunk_size):
    if cfg.form == "pg":
        return losses.opd_pg_loss(
            student_BTV,
            targets[target],
            ro.tokens_BT,
            mask,
            # Opt-in: with a sampling temperature or top-k/top-p the sampler's
            # log-probs differ from the scored ones.
            sampler_logp=ro.sampler_logp_BT if cfg.importance_weight else None,
            is_clip=cfg.is_clip,
            adv_clip=cfg.adv_clip,
            chunk_size=chunk_size,
        )
    return losses.divergence_loss(
        student_BTV,
        targets[target],
        ro.tokens_BT,
        mask,
        kind=cfg.kind,
        beta=cfg.beta,
        top_k=cfg.top_k or None,
        topk_mode=cfg.topk_mode,
        chunk_size=chunk_size,
    )


OPD = Method(
    name="opd",
    label="vanilla OPD (T->S)",
    config_cls=OPDConfig,
    passes=lambda cfg: {"teacher": Pass("teacher", "x"), **_gap_passes(cfg)},
    loss=_loss("teacher"),
    main_target="teacher",
    batch_refs=_refs,
    description="vanilla on-policy distillation, teacher without privilege (T->S)",
)

PRIVT = Method(
    name="privt",
    label="Priv.T->S",
    config_cls=OPDConfig,
    passes=lambda cfg: {"priv_teacher": Pass("teacher", "x+p"), **_gap_passes(cfg)},
    loss=_loss("priv_teacher"),
    main_target="priv_teacher",
    batch_refs=_refs,
    requires=("privileged",),
    description="privileged teacher, uniform loss on every token (Priv.T->S)",
)
