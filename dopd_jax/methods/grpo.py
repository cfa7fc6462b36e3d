"""GRPO: group-relative policy optimization on the task's verifier (methods.md section 8).

Each prompt's ``n_samples`` rollouts form a group; the verifier's reward, normalized
within the group (``steps.outcome``), is every token's advantage in a
clipped-ratio policy gradient, with an optional KL to the frozen initial student.
It trains MOPD's per-domain RL teachers and the Mix-RL / Cascade RL baselines.
"""

from __future__ import annotations

import dataclasses

from dopd_jax import losses
from dopd_jax.methods.base import Method, Pass


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """Hyperparameters of GRPO."""

    clip_eps: float = 0.2  # ratio clipped to [1 - clip_eps, 1 + clip_eps_high]
    clip_eps_high: float | None = None  # None: clip_eps
    kl_coef: float = 0.0  # weight of the k3 KL to the frozen initial student (0: off)
    adv_eps: float = 1e-6  # added to the group std

    def __post_init__(self):
        if not self.clip_eps > 0:
            raise ValueError(f"grpo clip_eps must be > 0, got {self.clip_eps}")
        if self.clip_eps_high is not None and not self.clip_eps_high > 0:
            raise ValueError(f"grpo clip_eps_high must be > 0, got {self.clip_eps_high}")
        if self.kl_coef < 0:
            raise ValueError(f"grpo kl_coef must be >= 0, got {self.kl_coef}")


def _passes(cfg: GRPOConfig) -> dict[str, Pass]:
    return {"ref": Pass("ref", "x")} if cfg.kl_coef > 0 else {}


def _loss(student_BTV, targets, ro, cfg: GRPOConfig, *, chunk_size=None, refs=None):
    return losses.grpo_loss(
        student_BTV,
        ro.tokens_BT,
        ro.mask_BT,
        ro.advantage_B,
        ro.sampler_logp_BT,
        clip_eps=cfg.clip_eps,
        clip_eps_high=cfg.clip_eps_high,
        ref_logits=targets.get("ref"),
        kl_coef=cfg.kl_coef,
        chunk_size=chunk_size,
    )


GRPO = Method(
    name="grpo",
    label="GRPO",
    config_cls=GRPOConfig,
    passes=_passes,
    loss=_loss,
    main_target=None,
    needs_reward=lambda cfg: True,
    description="group-relative policy optimization on the task verifier's reward",
)
