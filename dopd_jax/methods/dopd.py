"""Dual on-policy distillation (DOPD, methods.md section 4; design contract 2).

Per token, the gap between the privileged teacher and the privileged student
routes supervision: full-vocabulary JS to the teacher where it has a real
skill edge (HT), light or weak top-K reverse KL elsewhere (LH, LL, HS). The
privileged student is the live student by default, or its frozen / EMA copy
(``priv_student``), one of the two robustness switches against the collapse
the monitor watches for; ``hs_target="teacher"`` is the other.
"""

from __future__ import annotations

import dataclasses

from dopd_jax import losses
from dopd_jax.losses import routing
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

    def __post_init__(self):
        check_choice("dopd topk_mode", self.topk_mode, TOPK_MODES)
        check_choice("dopd hs_target", self.hs_target, losses.HS_TARGETS)
        check_choice("dopd priv_student", self.priv_student, PRIV_STUDENT_MODES)
        if self.top_k < 1:
            raise ValueError(f"dopd top_k must be >= 1, got {self.top_k}")


def _passes(cfg: DOPDConfig) -> dict[str, Pass]:
    return {
        "priv_teacher": Pass("teacher", "x+p"),
        "priv_student": priv_student_pass(cfg.priv_student),
    }


def _loss(student_BTV, targets, ro, cfg: DOPDConfig, *, chunk_size=None, refs=None):
    return losses.dopd_loss(
        student_BTV,
        targets["priv_student"],
        targets["priv_teacher"],
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
        refs=refs,
    )


def _ref_stats(cfg: DOPDConfig, targets, tokens_BT, chunk_size) -> dict:
    stats = routing.privilege_stats(
        targets["priv_student"], targets["priv_teacher"], tokens_BT, chunk_size
    )
    return {"gap": stats["gap"], "qS": stats["qS"], "qT": stats["qT"]}


def _reduce_refs(cfg: DOPDConfig, stats_NT: dict, mask_NT) -> dict:
    _, refs = routing.dopd_regimes(
        stats_NT["gap"],
        stats_NT["qS"],
        stats_NT["qT"],
        mask_NT,
        outlier_fraction=cfg.outlier_fraction,
        gap_threshold=cfg.gap_threshold,
    )
    return refs


DOPD = Method(
    name="dopd",
    label="DOPD",
    config_cls=DOPDConfig,
    passes=_passes,
    loss=_loss,
    main_target="priv_teacher",
    requires=("privileged",),
    batch_refs=BatchRefs(stats=_ref_stats, reduce=_reduce_refs),
    monitor=CollapseMonitor,
    description="dual on-policy distillation, advantage-gated routing",
)
