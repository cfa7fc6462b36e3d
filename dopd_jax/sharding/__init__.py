"""Device meshes, sharded initialisation and placement, and step shardings.

Typical use (one process or many; ``tests/multiprocess_worker.py`` runs two)::

  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 1})
  graphdef, params = sharding.init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
  state = sharding.init_state_sharded(params, optimizer, mesh, keep_ref=False)
  sh = sharding.step_shardings(mesh, optimizer, state, {"teacher": teacher_params})
  fns = steps.make_distill_fns(graphdefs, optimizer, spec, shardings=sh)
  batch = sharding.host_local_to_global(local_batch, mesh)  # this process's rows

The jitted steps declare their shardings, so committed inputs must already
sit in them (``shard_params``, ``jax.device_put(state, sh.state)``); the
in_shardings already constrain activations at step entry. The rule table
(which dimension goes on which mesh axis) is in ``dopd_jax.sharding.rules``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dopd_jax import state as state_lib
from dopd_jax.sharding import rules


def _resolve_shape(shape: Mapping[str, int], n_devices: int) -> dict[str, int]:
    if not shape:
        raise ValueError("mesh shape is empty; give e.g. {'data': -1}")
    unknown = [a for a in shape if a not in rules.MESH_AXES]
    if unknown:
        raise ValueError(
            f"mesh axes {unknown} are not used by the sharding rules; valid axes: {rules.MESH_AXES}"
        )
    bad = {
        a: s for a, s in shape.items() if not isinstance(s, numbers.Integral) or (s < 1 and s != -1)
    }
    if bad or list(shape.values()).count(-1) > 1:
        raise ValueError(f"mesh sizes must be positive ints with at most one -1, got {dict(shape)}")
    known = math.prod(s for s in shape.values() if s != -1)
    if n_devices % known or (-1 not in shape.values() and known != n_devices):
        raise ValueError(
            f"mesh shape {dict(shape)} (product {known}) does not match the {n_devices} devices"
        )
    return {a: (n_devices // known if s == -1 else int(s)) for a, s in shape.items()}


def make_mesh(shape: Mapping[str, int], devices=None) -> Mesh:
    """A mesh with ``AxisType.Auto`` axes (GSPMD propagation, as ``jax.jit`` expects).

    Args:
      shape: ``{axis: size}`` over ``data`` / ``fsdp`` / ``tensor``, in mesh
        order; one size may be -1 for "all remaining devices".
      devices: devices to use (default ``jax.devices()``, all processes).

    Returns:
      A ``jax.sharding.Mesh``.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = _resolve_shape(shape, len(devices))
    return jax.make_mesh(
        tuple(sizes.values()),
        tuple(sizes),
        axis_types=(AxisType.Auto,) * len(sizes),
        devices=devices,
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a value held whole on every device."""
    return NamedSharding(mesh, P())


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """NamedShardings of every parameter (``rules.param_partition_specs``)."""
    specs = rules.param_partition_specs(params, mesh)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def init_sharded(model_factory: Callable[[], nnx.Module], mesh: Mesh):
    """Initialises a model directly into its shardings (never whole on one device).

    Args:
      model_factory: no-argument callable building the module, e.g.
        ``lambda: Transformer(cfg, rngs=nnx.Rngs(seed))``.
      mesh: the device mesh.

    Returns:
      ``(graphdef, params)`` as from ``nnx.split``, params sharded by the rules.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(model_factory))
    init = jax.jit(
        lambda: nnx.split(model_factory())[1], out_shardings=param_shardings(abstract, mesh)
    )
    return graphdef, init()


def shard_params(params: Any, mesh: Mesh) -> Any:
    """Places already-materialised parameters into their rule shardings.

    With several processes every process must pass the same values; they go
    through host memory, since ``device_put`` only moves host values into
    shardings that span other processes' devices.
    """
    if jax.process_count() > 1:
        params = jax.device_get(params)
    return jax.device_put(params, param_shardings(params, mesh))


def state_shardings(
    state: state_lib.TrainState, optimizer: optax.GradientTransformation, mesh: Mesh
) -> state_lib.TrainState:
    """Shardings of a TrainState: optimizer moments follow their parameters.

    Args:
      state: a TrainState (arrays or ``ShapeDtypeStruct`` leaves).
      optimizer: the optax transformation that built ``state.opt_state``.
      mesh: the device mesh.

    Returns:
      A TrainState whose leaves are NamedShardings; counters and the step
      are replicated.
    """
    psh = param_shardings(state.params, mesh)
    opt = optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        state.opt_state,
        psh,
        transform_non_params=lambda _: replicated(mesh),
    )
    ref = None if state.ref_params is None else psh
    return state_lib.TrainState(psh, opt, ref, replicated(mesh))


def init_state_sharded(
    params: Any, optimizer: optax.GradientTransformation, mesh: Mesh, keep_ref: bool
) -> state_lib.TrainState:
    """``state_lib.init_state`` jitted straight into ``state_shardings``."""
    fn = functools.partial(state_lib.init_state, optimizer=optimizer, keep_ref=keep_ref)
    out = state_shardings(jax.eval_shape(fn, params), optimizer, mesh)
    return jax.jit(fn, out_shardings=out)(params)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: leading (row) dim over the data-parallel axes."""
    return NamedSharding(mesh, rules.batch_spec(mesh))


def _check_rows(batch: Any, shards: int, what: str) -> None:
    for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
        rows = np.shape(x)[0] if np.ndim(x) else None
        if rows is None or rows % shards:
            raise ValueError(
                f"{what} field {jax.tree_util.keystr(path)} has {rows} rows, "
                f"not divisible by {shards} data-parallel shards"
            )


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a whole (global) batch with rows split over the data-parallel axes.

    With several processes each must pass the same whole batch; to feed only
    a process's own rows use ``host_local_to_global``.
    """
    _check_rows(batch, rules.data_parallel_size(mesh), "batch")
    return jax.device_put(batch, batch_sharding(mesh))


def local_row_shards(mesh: Mesh) -> int:
    """How many distinct row shards this process's devices hold."""
    dims = [i for i, a in enumerate(mesh.axis_names) if a in rules.batch_axes(mesh)]
    coords = {
        tuple(idx[d] for d in dims)
        for idx, dev in np.ndenumerate(mesh.devices)
        if dev.process_index == jax.process_index()
    }
    return len(coords)


def process_row_slice(mesh: Mesh, global_rows: int) -> slice:
    """The rows of a global batch this process feeds to ``host_local_to_global``.

    Args:
      mesh: the device mesh.
      global_rows: rows of the global batch (divisible by the data-parallel size).

    Returns:
      A slice of contiguous rows.
    """
    shards = rules.data_parallel_size(mesh)
    if global_rows % shards:
        raise ValueError(
            f"global batch of {global_rows} rows is not divisible by {shards} data-parallel shards"
        )
    index = batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
    starts = sorted({idx[0].indices(global_rows)[:2] for idx in index.values()})
    lo, hi = starts[0][0], starts[-1][1]
    if hi - lo != len(starts) * (global_rows // shards):
        raise ValueError(
            f"this process's rows {starts} are not contiguous: order the "
            "mesh with the data-parallel axes outermost"
        )
    return slice(lo, hi)


def host_local_to_global(batch: Any, mesh: Mesh) -> Any:
    """Global batch arrays built from each process's own rows.

    Every process passes only its rows (the rows of the shards its devices
    hold, in device order); no process ever sees the whole batch.

    Args:
      batch: pytree of host arrays, leading dim = this process's rows.
      mesh: the device mesh (spanning all processes).

    Returns:
      The same pytree of global ``jax.Array``s sharded like ``batch_sharding``.
    """
    _check_rows(batch, local_row_shards(mesh), "process-local batch")
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def to_global_batch(batch: Any, mesh: Mesh) -> Any:
    """A whole host batch, built identically by every process, as step inputs.

    One process: ``batch`` is returned unchanged (the jitted steps place it by
    their ``in_shardings``). Several processes: each passes only its own rows
    (``process_row_slice``) to ``host_local_to_global``.
    """
    if jax.process_count() == 1:
        return batch
    rows = process_row_slice(mesh, np.shape(jax.tree.leaves(batch)[0])[0])
    return host_local_to_global(jax.tree.map(lambda x: np.asarray(x)[rows], batch), mesh)


def to_host(tree: Any) -> Any:
    """NumPy copies of (possibly multi-process) global arrays, whole in every process.

    Arrays not fully addressable here are gathered with ``process_allgather``
    (a collective: every process must call it).
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


@dataclasses.dataclass(frozen=True)
class StepShardings:
    """The sharding contract of the jitted step functions (see ``jit_kwargs``)."""

    mesh: Mesh
    state: state_lib.TrainState  # of NamedSharding (params, optimizer, ref, step)
    teachers: Any  # dict role -> NamedShardings of each teacher's params; None without
    rows: NamedSharding  # batch-like arrays: leading dim over data-parallel axes
    replicated: NamedSharding  # keys and scalar metrics

    def jit_kwargs(self, phase: str) -> dict:
        """``in_shardings`` / ``out_shardings`` of one step phase for ``jax.jit``."""
        s, rows, rep = self.state, self.rows, self.replicated
        table = {  # phase: (in_shardings, out_shardings) over its positional args
            # (state, teachers, batch, key) -> Rollout (teachers: {} or None for on-policy)
            "rollout": ((s, self.teachers, rows, rep), rows),
            "score": (
                (s, self.teachers, rows, rows),
                rows,
            ),  # (state, teachers, batch, ro) -> targets
            "update": ((s, rows, rows), (s, rep)),  # (state, ro, targets) -> (state, metrics)
            "sft": ((s, rows), (s, rep)),  # (state, batch) -> (state, metrics)
        }
        if phase not in table:
            raise ValueError(f"unknown step phase {phase!r}; valid: {sorted(table)}")
        if phase == "score" and self.teachers is None:
            raise ValueError(
                "the score phase needs teacher shardings: pass the teachers to step_shardings"
            )
        return {"in_shardings": table[phase][0], "out_shardings": table[phase][1]}


def step_shardings(
    mesh: Mesh,
    optimizer: optax.GradientTransformation,
    state: state_lib.TrainState,
    teachers: Any = None,
) -> StepShardings:
    """Builds the StepShardings of a student state (and optional teachers).

    Args:
      mesh: the device mesh.
      optimizer: the optax transformation of ``state``.
      state: TrainState, concrete or abstract (``jax.eval_shape``).
      teachers: dict role -> teacher parameter pytree (sharded by the same rules),
        e.g. ``{"teacher": params}``, or None.

    Returns:
      StepShardings for ``steps.make_distill_fns`` / ``steps.make_sft_fn``.
    """
    teacher = None if teachers is None else param_shardings(teachers, mesh)
    return StepShardings(
        mesh,
        state_shardings(state, optimizer, mesh),
        teacher,
        batch_sharding(mesh),
        replicated(mesh),
    )
