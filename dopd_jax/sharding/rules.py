"""Logical axis rules: which mesh axes shard which parameter and activation dims.

Three mesh axes at most:
  ``data``    data parallelism: batch rows only; parameters are replicated over it.
  ``fsdp``    batch rows too, and the model-width (``embed``) dimension of
              every kernel (ZeRO-3 style: weights are gathered per use).
  ``tensor``  Megatron-style model parallelism over vocab, heads and MLP width.

A parameter's logical axes come from the last two names of its path (see the
parameter tree in ``models/transformer.py``; kernels are ``[in, out]``). Norm
scales and any path not in ``PARAM_AXES`` are replicated.

Fallback (never a crash): a logical axis whose mesh axes are absent from the
mesh, or whose total size does not divide the dimension, leaves that
dimension replicated. E.g. a vocabulary of 25 on ``tensor=2`` keeps the
embedding's vocab dimension whole and still shards its width over ``fsdp``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import PartitionSpec as P

# Logical axis -> mesh axes (in order). Under ~10 rules by design (style.md, point 6).
LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
}

MESH_AXES = ("data", "fsdp", "tensor")

# (module name, parameter name) -> logical axes of each dimension.
PARAM_AXES: dict[tuple[str, str], tuple[str, ...]] = {
    ("embed", "embedding"): ("vocab", "embed"),  # [V, D]
    ("q_proj", "kernel"): ("embed", "heads"),  # [D, H*E]
    ("k_proj", "kernel"): ("embed", "kv_heads"),  # [D, G*E]
    ("v_proj", "kernel"): ("embed", "kv_heads"),  # [D, G*E]
    ("o_proj", "kernel"): ("heads", "embed"),  # [H*E, D]
    ("gate_proj", "kernel"): ("embed", "mlp"),  # [D, F]
    ("up_proj", "kernel"): ("embed", "mlp"),  # [D, F]
    ("down_proj", "kernel"): ("mlp", "embed"),  # [F, D]
    ("lm_head", "kernel"): ("embed", "vocab"),  # [D, V]
}


def axis_sizes(mesh_or_shape) -> dict[str, int]:
    """``{axis name: size}`` of a ``Mesh`` or of a mapping of axis sizes."""
    shape = getattr(mesh_or_shape, "shape", mesh_or_shape)
    return {str(k): int(v) for k, v in dict(shape).items()}


def mesh_axes_for(logical: str | None, dim: int, sizes: Mapping[str, int]):
    """Mesh axes sharding one dimension of size ``dim``, or None (replicated).

    Args:
      logical: logical axis name (a key of ``LOGICAL_RULES``) or None.
      dim: size of the dimension.
      sizes: ``{mesh axis: size}``.

    Returns:
      None, one mesh axis name, or a tuple of them (a ``PartitionSpec`` entry).
    """
    if logical is None:
        return None
    axes = tuple(a for a in LOGICAL_RULES[logical] if a in sizes)
    if not axes or dim % math.prod(sizes[a] for a in axes):
        return None
    return axes[0] if len(axes) == 1 else axes


def logical_to_spec(logical_axes, shape, mesh_or_shape) -> P:
    """PartitionSpec of an array from the logical names of its dimensions.

    Args:
      logical_axes: one logical name (or None) per dimension.
      shape: the array's shape.
      mesh_or_shape: a ``Mesh`` or ``{axis: size}``.

    Returns:
      A PartitionSpec; dimensions that cannot be sharded are None.
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {logical_axes} do not match shape {shape}")
    sizes = axis_sizes(mesh_or_shape)
    return P(*(mesh_axes_for(name, dim, sizes) for name, dim in zip(logical_axes, shape)))


def _path_names(path) -> tuple[str, ...]:
    names = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", None)))
        names.append(str(name))
    if names and names[-1] == "value":  # nnx.Variable's array field
        names.pop()
    return tuple(names)


def param_logical_axes(path, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of the parameter at ``path`` (a pytree key path)."""
    axes = PARAM_AXES.get(_path_names(path)[-2:])
    if axes is None or len(axes) != ndim:
        return (None,) * ndim
    return axes


def param_partition_specs(params: Any, mesh_or_shape) -> Any:
    """PartitionSpecs of every parameter, from its path and shape.

    Args:
      params: parameter pytree (``nnx.State``; arrays or ``ShapeDtypeStruct``).
      mesh_or_shape: a ``Mesh`` or ``{axis: size}``.

    Returns:
      A pytree of the same structure with a ``PartitionSpec`` per leaf.
    """
    sizes = axis_sizes(mesh_or_shape)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: logical_to_spec(param_logical_axes(path, len(x.shape)), x.shape, sizes),
        params,
    )


def batch_axes(mesh_or_shape) -> tuple[str, ...]:
    """The mesh axes that split batch rows (the ``batch`` rule, present axes only)."""
    return tuple(a for a in LOGICAL_RULES["batch"] if a in axis_sizes(mesh_or_shape))


def batch_spec(mesh_or_shape) -> P:
    """PartitionSpec of a batch array: rows over the ``batch`` rule's mesh axes."""
    axes = batch_axes(mesh_or_shape)
    return P(axes) if axes else P()


def data_parallel_size(mesh_or_shape) -> int:
    """Number of row shards of a batch (product of the ``batch`` mesh axes)."""
    sizes = axis_sizes(mesh_or_shape)
    return math.prod(sizes[a] for a in batch_axes(sizes))
