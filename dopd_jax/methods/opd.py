"""Vanilla on-policy distillation (T->S) and the privileged-teacher baseline (Priv.T->S).

Both score the student's own rollouts under one frozen teacher: without the
privileged context (``opd``) or with it (``privt``, the uniform-loss baseline
DOPD compares against). Loss forms (methods.md section 3): ``pg``, the
per-token advantage ``A_n = log T(y_n) - log S(y_n)`` as a policy gradient,
or ``analytic``, a divergence over the vocabulary.
"""

from __future__ import annotations

import dataclasses

from dopd_jax import losses
from dopd_jax.methods.base import Method, Pass, check_choice

DIVERGENCES = ("fkl", "rkl", "jsd")
TOPK_MODES = ("renormalize", "generalized")


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

    def __post_init__(self):
        check_choice("opd form", self.form, ("pg", "analytic"))
        check_choice("opd kind", self.kind, DIVERGENCES)
        check_choice("opd topk_mode", self.topk_mode, TOPK_MODES)
        if self.top_k < 0:
            raise ValueError(f"opd top_k must be >= 0 (0 = full vocabulary), got {self.top_k}")
        if self.is_clip is not None and not self.importance_weight:
            raise ValueError(
                "opd is_clip truncates the importance weight: set importance_weight=True with it"
            )


def _loss(target: str):
    def loss(student_BTV, targets, ro, cfg: OPDConfig, *, chunk_size=None, refs=None):
        if cfg.form == "pg":
            return losses.opd_pg_loss(
                student_BTV,
                targets[target],
                ro.tokens_BT,
                ro.mask_BT,
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
            ro.mask_BT,
            kind=cfg.kind,
            beta=cfg.beta,
            top_k=cfg.top_k or None,
            topk_mode=cfg.topk_mode,
            chunk_size=chunk_size,
        )

    return loss


OPD = Method(
    name="opd",
    label="vanilla OPD (T->S)",
    config_cls=OPDConfig,
    passes=lambda cfg: {"teacher": Pass("teacher", "x")},
    loss=_loss("teacher"),
    main_target="teacher",
    description="vanilla on-policy distillation, teacher without privilege (T->S)",
)

PRIVT = Method(
    name="privt",
    label="Priv.T->S",
    config_cls=OPDConfig,
    passes=lambda cfg: {"priv_teacher": Pass("teacher", "x+p")},
    loss=_loss("priv_teacher"),
    main_target="priv_teacher",
    requires=("privileged",),
    description="privileged teacher, uniform loss on every token (Priv.T->S)",
)
