"""On-policy self-distillation (OPSD, methods.md section 5).

The target is the student itself given the privileged context: by default
its frozen step-0 copy (``priv_student="frozen"``), or the live student, or
an EMA of it. The divergence defaults to JSD(0.5) over the full vocabulary.
"""

from __future__ import annotations

import dataclasses

from dopd_jax import losses
from dopd_jax.methods.base import PRIV_STUDENT_MODES, Method, check_choice, priv_student_pass
from dopd_jax.methods.opd import DIVERGENCES, TOPK_MODES


@dataclasses.dataclass(frozen=True)
class OPSDConfig:
    """Hyperparameters of OPSD."""

    kind: str = "jsd"  # "fkl" | "rkl" | "jsd"
    beta: float = 0.5
    top_k: int = 0  # 0 = full vocabulary
    topk_mode: str = "renormalize"
    priv_student: str = "frozen"  # the target: "live" | "frozen" | "ema"
    ema_decay: float = 0.99

    def __post_init__(self):
        check_choice("opsd kind", self.kind, DIVERGENCES)
        check_choice("opsd topk_mode", self.topk_mode, TOPK_MODES)
        check_choice("opsd priv_student", self.priv_student, PRIV_STUDENT_MODES)
        if self.top_k < 0:
            raise ValueError(f"opsd top_k must be >= 0 (0 = full vocabulary), got {self.top_k}")


def _loss(student_BTV, targets, ro, cfg: OPSDConfig, *, chunk_size=None, refs=None):
    return losses.divergence_loss(
        student_BTV,
        targets["priv_student"],
        ro.tokens_BT,
        ro.mask_BT,
        kind=cfg.kind,
        beta=cfg.beta,
        top_k=cfg.top_k or None,
        topk_mode=cfg.topk_mode,
        chunk_size=chunk_size,
    )


OPSD = Method(
    name="opsd",
    label="OPSD",
    config_cls=OPSDConfig,
    passes=lambda cfg: {"priv_student": priv_student_pass(cfg.priv_student)},
    loss=_loss,
    main_target="priv_student",
    requires=("privileged",),
    description="on-policy self-distillation: target is the student given p",
)
