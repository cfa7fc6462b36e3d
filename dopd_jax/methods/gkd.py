"""Generalized knowledge distillation (GKD, methods.md section 6; arXiv 2306.13649).

A fraction ``lmbda`` of the steps trains on the student's own samples; the
rest on off-policy responses: the task's gold responses, or the teacher's
samples (``seq_kd``). The source is drawn per step from the run's seeded key
(``steps.responses``). The loss is any divergence of methods.md section 2 to
the teacher: over the full vocabulary, the teacher's top-K, or the sampled
tokens (an importance-corrected single-sample estimate, which makes
``lmbda=0, seq_kd=True, kind="fkl", granularity="sampled"`` plain SFT on the
teacher's samples: MOPD's Off-policy FT baseline).
"""

from __future__ import annotations

import dataclasses

from dopd_jax import losses
from dopd_jax.methods.base import Method, Pass, check_choice
from dopd_jax.methods.opd import DIVERGENCES, TOPK_MODES

GRANULARITIES = ("full", "topk", "sampled")


@dataclasses.dataclass(frozen=True)
class GKDConfig:
    """Hyperparameters of GKD."""

    lmbda: float = 0.5  # probability that a step is on-policy
    kind: str = "jsd"  # "fkl" | "rkl" | "jsd"
    beta: float = 0.5  # JSD mixing weight of the target
    granularity: str = "full"  # "full" | "topk" | "sampled"
    top_k: int = 128  # K of granularity="topk" (clamped to V)
    topk_mode: str = "renormalize"
    seq_kd: bool = False  # off-policy responses: the teacher's samples, not gold
    teacher_role: str = "teacher"  # "teacher", "teacher/<name>" or "teacher/@domain"

    def __post_init__(self):
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"gkd lmbda must be in [0, 1], got {self.lmbda}")
        check_choice("gkd kind", self.kind, DIVERGENCES)
        check_choice("gkd granularity", self.granularity, GRANULARITIES)
        check_choice("gkd topk_mode", self.topk_mode, TOPK_MODES)
        if self.granularity == "sampled":
            kinds = losses.policy.SAMPLED_KINDS
            check_choice("gkd kind with granularity='sampled'", self.kind, kinds)
        if self.top_k < 1:
            raise ValueError(f"gkd top_k must be >= 1, got {self.top_k}")
        Pass(self.teacher_role, "x")  # validates the role
        if not self.teacher_role.startswith("teacher"):
            raise ValueError(f"gkd teacher_role must be a teacher role, got {self.teacher_role!r}")


def _responses(cfg: GKDConfig) -> dict[str, float]:
    return {"student": cfg.lmbda, "teacher" if cfg.seq_kd else "gold": 1.0 - cfg.lmbda}


def _loss(student_BTV, targets, ro, cfg: GKDConfig, *, chunk_size=None, refs=None):
    if cfg.granularity == "sampled":
        return losses.sampled_divergence_loss(
            student_BTV,
            targets["teacher"],
            ro.tokens_BT,
            ro.mask_BT,
            kind=cfg.kind,
            on_policy=ro.on_policy_B,
            chunk_size=chunk_size,
        )
    return losses.divergence_loss(
        student_BTV,
        targets["teacher"],
        ro.tokens_BT,
        ro.mask_BT,
        kind=cfg.kind,
        beta=cfg.beta,
        top_k=cfg.top_k if cfg.granularity == "topk" else None,
        topk_mode=cfg.topk_mode,
        chunk_size=chunk_size,
    )


GKD = Method(
    name="gkd",
    label="GKD",
    config_cls=GKDConfig,
    passes=lambda cfg: {"teacher": Pass(cfg.teacher_role, "x")},
    loss=_loss,
    main_target="teacher",
    responses=_responses,
    description="generalized KD: on-policy share lmbda, else gold or teacher samples",
)
