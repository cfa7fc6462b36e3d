"""Distillation methods: which forward passes each needs and how they become a loss.

One registry (``METHODS``) maps a method name to a ``Method``. A method names
the target passes it needs (scored by ``steps.score_step``) and turns the
student's logits plus those targets into ``(loss, metrics)`` using the array
losses of ``dopd_jax.losses``. Adding a method is one entry here.

Target passes (all over the same sampled response tokens):
  ``teacher``       frozen teacher on the plain prompt x        (T->S)
  ``priv_teacher``  frozen teacher on x + privileged context p  (Priv.T->S)
  ``priv_student``  student (or its frozen / EMA copy) on x + p, stop-gradient
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from dopd_jax import losses

PASSES = ("teacher", "priv_teacher", "priv_student")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static loss hyperparameters shared by every method (hashable for jit)."""

    form: str = "pg"  # OPD / Priv.T->S: "pg" (per-token advantage) or "analytic"
    kind: str = "rkl"  # divergence of the analytic form: "fkl" | "rkl" | "jsd"
    opsd_kind: str = "jsd"  # OPSD divergence (methods.md section 5 default JSD 0.5)
    beta: float = 0.5  # JSD mixing weight of the target
    top_k: int = 128  # DOPD top-K (clamped to V); also analytic top-K when set
    analytic_top_k: int = 0  # 0 = full vocabulary for analytic / OPSD
    topk_mode: str = "renormalize"
    beta_light: float = 0.6
    beta_weak: float = 0.3
    outlier_fraction: float = 0.05
    hs_target: str = "priv_student"
    gap_threshold: float | None = None
    is_clip: tuple[float, float] | None = None  # truncated importance weight
    adv_clip: float | None = None
    chunk_size: int | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """A distillation method: its target passes, loss, and diagnostic target."""

    name: str
    passes: tuple[str, ...]
    main_target: str  # the pass diagnostics (entropy, top-K overlap) compare to
    loss_fn: Callable[..., tuple[jax.Array, dict[str, Any]]]
    description: str

    @property
    def needs_privilege(self) -> bool:
        return any(p.startswith("priv_") for p in self.passes)


def _opd_like(target: str):
    """OPD loss (pg or analytic) against one target pass."""

    def loss_fn(student_BTV, targets, rollout, cfg: LossConfig):
        target_BTV = targets[target]
        if cfg.form == "pg":
            return losses.opd_pg_loss(
                student_BTV, target_BTV, rollout.tokens_BT, rollout.mask_BT,
                # The truncated importance weight is opt-in: with a sampling temperature
                # or top-k/top-p the sampler's log-probs differ from the scored ones.
                sampler_logp=rollout.sampler_logp_BT if cfg.is_clip else None,
                is_clip=cfg.is_clip, adv_clip=cfg.adv_clip, chunk_size=cfg.chunk_size)
        return losses.divergence_loss(
            student_BTV, target_BTV, rollout.tokens_BT, rollout.mask_BT,
            kind=cfg.kind, beta=cfg.beta, top_k=cfg.analytic_top_k or None,
            topk_mode=cfg.topk_mode, chunk_size=cfg.chunk_size)

    return loss_fn


def _opsd_loss(student_BTV, targets, rollout, cfg: LossConfig):
    return losses.divergence_loss(
        student_BTV, targets["priv_student"], rollout.tokens_BT, rollout.mask_BT,
        kind=cfg.opsd_kind, beta=cfg.beta, top_k=cfg.analytic_top_k or None,
        topk_mode=cfg.topk_mode, chunk_size=cfg.chunk_size)


def _dopd_loss(student_BTV, targets, rollout, cfg: LossConfig):
    return losses.dopd_loss(
        student_BTV, targets["priv_student"], targets["priv_teacher"],
        rollout.tokens_BT, rollout.mask_BT, top_k=cfg.top_k,
        beta_light=cfg.beta_light, beta_weak=cfg.beta_weak,
        outlier_fraction=cfg.outlier_fraction, topk_mode=cfg.topk_mode,
        hs_target=cfg.hs_target, gap_threshold=cfg.gap_threshold,
        chunk_size=cfg.chunk_size)


METHODS: dict[str, Method] = {
    "opd": Method("opd", ("teacher",), "teacher", _opd_like("teacher"),
                  "vanilla on-policy distillation, teacher without privilege (T->S)"),
    "privt": Method("privt", ("priv_teacher",), "priv_teacher", _opd_like("priv_teacher"),
                    "privileged teacher, uniform loss on every token (Priv.T->S)"),
    "opsd": Method("opsd", ("priv_student",), "priv_student", _opsd_loss,
                   "on-policy self-distillation: target is the student given p"),
    "dopd": Method("dopd", ("priv_teacher", "priv_student"), "priv_teacher", _dopd_loss,
                   "dual on-policy distillation, advantage-gated routing"),
}


def get_method(name: str) -> Method:
    """Looks a method up by name; unknown names list the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {sorted(METHODS)}")
    return METHODS[name]
