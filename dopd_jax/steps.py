"""Pure step functions: rollout, scoring, update (distillation) and SFT.

Every function here is pure over pytrees: static configuration (graphdefs,
the optimizer, the method) is bound with ``functools.partial`` and the
caller jits once (see ``make_distill_fns`` / ``make_sft_fn``). Teacher
parameters are always an argument, never closed over and never donated.

A distillation step is ``rollout_step`` -> ``score_step`` -> ``update_step``;
``distill_step`` composes the three for users' own JAX code. The trainer
calls the three separately so it can report the rollout / scoring / update
time split of methods.md section 9.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dopd_jax import diagnostics, rollout as rollout_lib
from dopd_jax.methods import PASSES, LossConfig, Method


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["params", "opt_state", "ref_params", "step"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Trainable student state (donated to every update)."""

    params: Any  # student nnx.State of Param leaves
    opt_state: Any  # optax state for params
    ref_params: Any  # frozen (step-0) or EMA copy of params; None when unused
    step: jax.Array  # int32 []


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["prompt_BP", "prompt_mask_BP", "priv_BQ", "priv_mask_BQ"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class DistillBatch:
    """One batch of prompts (one row per prompt, before n_samples repetition)."""

    prompt_BP: jax.Array  # int32 left-padded [BOS] + x
    prompt_mask_BP: jax.Array  # bool, True on real prompt tokens
    priv_BQ: jax.Array  # int32 left-padded [BOS] + x + p
    priv_mask_BQ: jax.Array  # bool


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["inputs_BL", "targets_BL", "loss_mask_BL"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SFTBatch:
    """Teacher-forced batch for supervised fine-tuning."""

    inputs_BL: jax.Array  # int32 right-padded input ids
    targets_BL: jax.Array  # int32 next-token ids (inputs shifted by one)
    loss_mask_BL: jax.Array  # bool, True where the target is a response token or EOS


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    """Static description of a distillation step (hashable; bound by partial)."""

    method: Method
    loss: LossConfig
    sampler: rollout_lib.SamplerConfig
    priv_student: str = "live"  # "live" | "frozen" | "ema" (OPSD: live | frozen)
    ema_decay: float = 0.99
    # Extra passes scored only for sampled-token KL diagnostics (methods.md section 4:
    # every DOPD run logs KL to the privileged and to the plain teacher).
    log_passes: tuple[str, ...] = ("teacher", "priv_teacher")


def init_state(params, optimizer: optax.GradientTransformation, keep_ref: bool) -> TrainState:
    """Builds a TrainState; ``keep_ref`` stores a copy of params as the reference."""
    ref = jax.tree.map(jnp.copy, params) if keep_ref else None
    return TrainState(params, optimizer.init(params), ref, jnp.zeros((), jnp.int32))


def rollout_step(graphdef, spec: DistillSpec, state: TrainState, batch: DistillBatch,
                 key: jax.Array) -> rollout_lib.Rollout:
    """Samples responses from the deployed student (prompt x only)."""
    key = jax.random.fold_in(key, state.step)
    return rollout_lib.sample(graphdef, state.params, batch.prompt_BP,
                              batch.prompt_mask_BP, key, spec.sampler)


def _priv_student_params(spec: DistillSpec, state: TrainState):
    return state.params if spec.priv_student == "live" else state.ref_params


def score_step(graphdef_s, graphdef_t, spec: DistillSpec, state: TrainState,
               teacher_params, batch: DistillBatch, ro: rollout_lib.Rollout) -> dict:
    """Scores the sampled responses under every target pass the method needs.

    Returns a dict pass name -> logits_BTV (stop-gradient) aligned with
    ``ro.tokens_BT``, plus ``logp_<pass>_BT`` sampled-token log-probs of the
    diagnostic passes (``spec.log_passes``) that the method does not use.
    """
    n = spec.sampler.n_samples
    priv_BQ = rollout_lib.repeat_rows(batch.priv_BQ, n)
    priv_mask_BQ = rollout_lib.repeat_rows(batch.priv_mask_BQ, n)
    passes = {
        "teacher": lambda: rollout_lib.score(graphdef_t, teacher_params, ro.prompt_BP,
                                             ro.prompt_mask_BP, ro.tokens_BT),
        "priv_teacher": lambda: rollout_lib.score(graphdef_t, teacher_params, priv_BQ,
                                                  priv_mask_BQ, ro.tokens_BT),
        "priv_student": lambda: rollout_lib.score(graphdef_s, _priv_student_params(spec, state),
                                                  priv_BQ, priv_mask_BQ, ro.tokens_BT),
    }
    targets = {name: jax.lax.stop_gradient(passes[name]()) for name in spec.method.passes}
    for name in spec.log_passes:
        if name not in targets:
            logits = jax.lax.stop_gradient(passes[name]())
            targets[f"logp_{name}_BT"] = _gather_logp(logits, ro.tokens_BT)
    return targets


def _gather_logp(logits_BTV, tokens_BT):
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp_BTV, tokens_BT[..., None], axis=-1)[..., 0]


def _rollout_metrics(ro: rollout_lib.Rollout) -> dict:
    lengths_B = ro.mask_BT.sum(-1).astype(jnp.float32)
    return {"response_len": lengths_B.mean(),
            "truncated_frac": ro.truncated_B.astype(jnp.float32).mean(),
            "num_tokens": lengths_B.sum()}


def _sampled_kls(student_BTV, targets, ro) -> dict:
    """Sampled-token reverse-KL estimates ``kl_to_<pass>`` for every scored pass."""
    s_logp = _gather_logp(jax.lax.stop_gradient(student_BTV), ro.tokens_BT)
    m = ro.mask_BT.astype(jnp.float32)
    out = {}
    for name in PASSES:
        if name in targets:
            t_logp = _gather_logp(targets[name], ro.tokens_BT)
        elif f"logp_{name}_BT" in targets:
            t_logp = targets[f"logp_{name}_BT"]
        else:
            continue
        out[f"kl_to_{name}"] = ((s_logp - t_logp) * m).sum() / jnp.maximum(m.sum(), 1.0)
    return out


def update_step(graphdef_s, optimizer, spec: DistillSpec, state: TrainState,
                ro: rollout_lib.Rollout, targets: dict) -> tuple[TrainState, dict]:
    """Student forward on x + method loss + optimizer update."""

    def loss_fn(params):
        student_BTV = rollout_lib.score(graphdef_s, params, ro.prompt_BP,
                                        ro.prompt_mask_BP, ro.tokens_BT)
        loss, metrics = spec.method.loss_fn(student_BTV, targets, ro, spec.loss)
        return loss, (metrics, student_BTV)

    (loss, (metrics, student_BTV)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    new_state = apply_gradients(optimizer, spec, state, grads)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    metrics.update(diagnostics.token_stats(
        student_BTV, targets[spec.method.main_target], ro.tokens_BT, ro.mask_BT,
        top_k=min(spec.loss.top_k, student_BTV.shape[-1]), chunk_size=spec.loss.chunk_size))
    metrics.update(_sampled_kls(student_BTV, targets, ro))
    metrics.update(_rollout_metrics(ro))
    return new_state, metrics


def apply_gradients(optimizer, spec: DistillSpec, state: TrainState, grads) -> TrainState:
    """One optimizer update of the student; an EMA privileged copy follows it."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ref = state.ref_params
    if spec.priv_student == "ema":
        ref = jax.tree.map(lambda r, p: spec.ema_decay * r + (1 - spec.ema_decay) * p,
                           ref, params)
    return TrainState(params, opt_state, ref, state.step + 1)


def distill_step(graphdef_s, graphdef_t, optimizer, spec: DistillSpec, state: TrainState,
                 teacher_params, batch: DistillBatch, key: jax.Array):
    """One full on-policy distillation step: ``(state, teacher_params, batch, key) -> (state, metrics)``."""
    ro = rollout_step(graphdef_s, spec, state, batch, key)
    targets = score_step(graphdef_s, graphdef_t, spec, state, teacher_params, batch, ro)
    return update_step(graphdef_s, optimizer, spec, state, ro, targets)


def sft_step(graphdef, optimizer, state: TrainState, batch: SFTBatch) -> tuple[TrainState, dict]:
    """Cross-entropy on the response tokens of a teacher-forced batch."""

    def loss_fn(params):
        logits_BLV = nnx.merge(graphdef, params)(
            batch.inputs_BL, mask_BL=batch.inputs_BL != 0).astype(jnp.float32)
        nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, batch.targets_BL)
        m = batch.loss_mask_BL.astype(jnp.float32)
        correct = (logits_BLV.argmax(-1) == batch.targets_BL).astype(jnp.float32)
        denom = jnp.maximum(m.sum(), 1.0)
        return (nll_BL * m).sum() / denom, {"token_acc": (correct * m).sum() / denom}

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return TrainState(params, opt_state, state.ref_params, state.step + 1), metrics


@dataclasses.dataclass(frozen=True)
class DistillFns:
    """The jitted pieces of a distillation step (one jit call site each)."""

    rollout: Any
    score: Any
    update: Any


def make_distill_fns(graphdef_s, graphdef_t, optimizer, spec: DistillSpec,
                     shardings=None) -> DistillFns:
    """Binds static configuration and jits the three phases of a step.

    Args:
      graphdef_s, graphdef_t: student / teacher graphdefs (``nnx.split``).
      optimizer: the student's optax transformation.
      spec: static step description.
      shardings: ``sharding.StepShardings`` (``sharding.step_shardings``), or
        None to leave placement to JAX. With shardings every phase states its
        in/out shardings (``StepShardings.jit_kwargs``); the state and teacher
        params must already be placed in them. The state is donated to the
        update; the teacher params never are.

    Returns:
      DistillFns(rollout(state, batch, key), score(state, teacher_params,
      batch, ro), update(state, ro, targets)), called positionally.
    """
    jit_kwargs = (lambda phase: {}) if shardings is None else shardings.jit_kwargs
    return DistillFns(
        rollout=jax.jit(functools.partial(rollout_step, graphdef_s, spec),
                        **jit_kwargs("rollout")),
        score=jax.jit(functools.partial(score_step, graphdef_s, graphdef_t, spec),
                      **jit_kwargs("score")),
        update=jax.jit(functools.partial(update_step, graphdef_s, optimizer, spec),
                       donate_argnames=("state",), **jit_kwargs("update")),
    )


def make_sft_fn(graphdef, optimizer, shardings=None):
    """Jits the SFT step ``(state, batch) -> (state, metrics)`` with the state donated.

    Args:
      graphdef: the model's graphdef.
      optimizer: its optax transformation.
      shardings: ``sharding.StepShardings`` or None (see ``make_distill_fns``).
    """
    jit_kwargs = {} if shardings is None else shardings.jit_kwargs("sft")
    return jax.jit(functools.partial(sft_step, graphdef, optimizer),
                   donate_argnames=("state",), **jit_kwargs)
