"""The student's training state: the one pytree every update step takes and returns."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "opt_state", "ref_params", "step"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Trainable student state (donated to every update)."""

    params: Any  # student nnx.State of Param leaves
    opt_state: Any  # optax state for params
    ref_params: Any  # frozen (step-0) or EMA copy of params (role "ref"); None when unused
    step: jax.Array  # int32 []


def init_state(params, optimizer: optax.GradientTransformation, keep_ref: bool) -> TrainState:
    """Builds a TrainState; ``keep_ref`` stores a copy of params as the reference."""
    ref = jax.tree.map(jnp.copy, params) if keep_ref else None
    return TrainState(params, optimizer.init(params), ref, jnp.zeros((), jnp.int32))
