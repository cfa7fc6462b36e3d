"""Supervised fine-tuning step: cross-entropy on the response tokens of a teacher-forced batch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dopd_jax.data.batches import SFTBatch
from dopd_jax.state import TrainState


def sft_step(graphdef, optimizer, state: TrainState, batch: SFTBatch) -> tuple[TrainState, dict]:
    """Mean cross-entropy over the response (and EOS) targets; one optimizer update."""

    def loss_fn(params):
        logits_BLV = nnx.merge(graphdef, params)(
            batch.inputs_BL, mask_BL=batch.input_mask_BL
        ).astype(jnp.float32)
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


def make_sft_fn(graphdef, optimizer, shardings=None):
    """Jits the SFT step ``(state, batch) -> (state, metrics)`` with the state donated.

    Args:
      graphdef: the model's graphdef.
      optimizer: its optax transformation.
      shardings: ``sharding.StepShardings`` or None (see ``make_distill_fns``).
    """
    jit_kwargs = {} if shardings is None else shardings.jit_kwargs("sft")
    return jax.jit(
        functools.partial(sft_step, graphdef, optimizer), donate_argnames=("state",), **jit_kwargs
    )
