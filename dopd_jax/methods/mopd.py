"""Multi-teacher on-policy distillation (MOPD, methods.md section 7; arXiv 2606.30406).

One frozen teacher per domain; each rollout is scored by its own domain's
teacher only (the routed role ``teacher/@domain``: per row, inside the step).
Loss forms: ``pg``, the per-token advantage ``clip(log T_d - log S, -5, 5)`` as
a policy gradient, or ``topk``, the generalized reverse KL over the teacher's
top-64. Options: the outcome advantage ``alpha * A_ORM`` (GRPO's group
advantage of the task verifier's reward) and the truncated importance weight
``sg[pi_train / pi_sampler]`` zeroed outside ``is_clip = (eps_low, eps_high)``
(MiMo-V2-Flash form).

``merge`` (Param-Merge, the baseline that trains nothing) lives here too: the
domain teachers' weights averaged, or task arithmetic
``theta_0 + lam * sum_d (theta_d - theta_0)`` from the student init.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dopd_jax import losses
from dopd_jax.losses import divergences as div_lib
from dopd_jax.methods.base import ROUTED_TEACHER, Method, Pass, check_choice

FORMS = ("pg", "topk")


@dataclasses.dataclass(frozen=True)
class MOPDConfig:
    """Hyperparameters of MOPD (defaults: methods.md section 7)."""

    form: str = "pg"  # "pg" | "topk"
    adv_clip: float = 5.0  # pg: A_n clipped to [-adv_clip, adv_clip]
    top_k: int = 64  # topk: K of the teacher's top-K (generalized RKL)
    alpha: float = 0.0  # weight of the outcome advantage A_ORM (0: off)
    is_clip: tuple[float, float] | None = None  # (eps_low, eps_high): truncated IS weight

    def __post_init__(self):
        check_choice("mopd form", self.form, FORMS)
        if not self.adv_clip > 0:
            raise ValueError(f"mopd adv_clip must be > 0, got {self.adv_clip}")
        if self.top_k < 1:
            raise ValueError(f"mopd top_k must be >= 1, got {self.top_k}")
        if self.alpha < 0:
            raise ValueError(f"mopd alpha must be >= 0, got {self.alpha}")
        if self.is_clip is not None and not (
            len(self.is_clip) == 2 and 0 <= self.is_clip[0] <= self.is_clip[1]
        ):
            raise ValueError(
                f"mopd is_clip must be (eps_low, eps_high), 0 <= low <= high, got {self.is_clip}"
            )


def _outcome(ro, cfg: MOPDConfig):
    return None if cfg.alpha == 0 else cfg.alpha * ro.advantage_B


def _loss(student_BTV, targets, ro, cfg: MOPDConfig, *, chunk_size=None, refs=None):
    sampler_logp = ro.sampler_logp_BT if cfg.is_clip is not None else None
    if cfg.form == "pg":
        return losses.opd_pg_loss(
            student_BTV,
            targets["teacher"],
            ro.tokens_BT,
            ro.mask_BT,
            sampler_logp=sampler_logp,
            is_clip=cfg.is_clip,
            adv_clip=cfg.adv_clip,
            outcome_adv=_outcome(ro, cfg),
            chunk_size=chunk_size,
        )
    loss, metrics = losses.divergence_loss(
        student_BTV,
        targets["teacher"],
        ro.tokens_BT,
        ro.mask_BT,
        kind="rkl",
        top_k=cfg.top_k,
        topk_mode="generalized",
        chunk_size=chunk_size,
    )
    outcome = _outcome(ro, cfg)
    if outcome is not None:  # the outcome term as a policy gradient on the sampled tokens
        logS = div_lib.sampled_logprobs(student_BTV, ro.tokens_BT, chunk_size)
        adv_BT = jnp.broadcast_to(outcome[:, None], logS.shape)
        loss = loss + div_lib.sequence_mean(-jax.lax.stop_gradient(adv_BT) * logS, ro.mask_BT)
        metrics["outcome_adv_mean"] = div_lib.token_mean(adv_BT, ro.mask_BT)
    return loss, metrics


MOPD = Method(
    name="mopd",
    label="MOPD",
    config_cls=MOPDConfig,
    passes=lambda cfg: {"teacher": Pass(ROUTED_TEACHER, "x")},
    loss=_loss,
    main_target="teacher",
    needs_reward=lambda cfg: cfg.alpha > 0,
    description="multi-teacher on-policy distillation: each rollout scored by its domain's teacher",
)


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    """Param-Merge: ``average`` of the domain teachers, or ``task_arithmetic``."""

    mode: str = "average"  # "average" | "task_arithmetic"
    lam: float = 1.0  # task arithmetic: theta_0 + lam * sum_d (theta_d - theta_0)

    def __post_init__(self):
        check_choice("merge mode", self.mode, ("average", "task_arithmetic"))


def domain_teachers(teachers: dict) -> dict:
    """The ``teacher/<domain>`` entries of a teachers dict (sorted by role)."""
    return {r: p for r, p in sorted(teachers.items()) if r.startswith("teacher/")}


def merge_params(cfg: MergeConfig, student_params, teachers: dict):
    """The merged parameters (float32 math, the student's dtypes)."""
    ds = domain_teachers(teachers)
    if not ds:
        raise ValueError("merge needs domain teachers (distill.teachers), found none")
    ref = jax.tree.structure(student_params)
    for role, p in ds.items():
        shapes = jax.tree.map(jnp.shape, p)
        if jax.tree.structure(p) != ref or shapes != jax.tree.map(jnp.shape, student_params):
            raise ValueError(f"merge: {role} does not have the student's architecture")
    stacked = [jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), p) for p in ds.values()]
    theta0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), student_params)
    if cfg.mode == "average":
        merged = jax.tree.map(lambda *xs: sum(xs) / len(xs), *stacked)
    else:
        merged = jax.tree.map(
            lambda t0, *xs: t0 + cfg.lam * sum(x - t0 for x in xs), theta0, *stacked
        )
    return jax.tree.map(lambda m, s: m.astype(jnp.asarray(s).dtype), merged, student_params)


def _no_training(student_BTV, targets, ro, cfg, *, chunk_size=None, refs=None):
    raise ValueError("merge trains nothing: run it with steps=0")


MERGE = Method(
    name="merge",
    label="Param-Merge",
    config_cls=MergeConfig,
    passes=lambda cfg: {},
    loss=_no_training,
    main_target=None,
    prepare=merge_params,
    description="Param-Merge baseline: weight average or task arithmetic of the domain teachers",
)
