"""One process of ``test_multiprocess``: sharded SFT and DOPD steps on its own rows.

Run as ``python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON``
with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``. The test imports
``run_steps`` to compute the single-process reference of the same steps.
"""

import json
import sys

import jax
import numpy as np
import optax
from flax import nnx

from dopd_jax import sharding, steps
from dopd_jax.methods import get_method
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.steps import rollout as rollout_lib

V, ROWS, STEPS = 24, 8, 2
MESH_SHAPE = {"data": 1, "fsdp": 2, "tensor": 2}  # fsdp spans the two processes


def _model_cfg(d: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=V,
        d_model=d,
        n_layers=1,
        n_heads=2,
        n_kv_heads=2,
        head_dim=d // 2,
        d_ff=2 * d,
        qk_norm=True,
    )


def _batches():
    """The global SFT and distillation batches (NumPy, identical in every process)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(4, V, size=(ROWS, 9)).astype(np.int32)
    sft = steps.SFTBatch(
        ids[:, :-1], ids[:, 1:], np.arange(8)[None].repeat(ROWS, 0) >= 3, np.ones((ROWS, 8), bool)
    )
    prompt = rng.integers(4, V, size=(ROWS, 5)).astype(np.int32)
    priv = rng.integers(4, V, size=(ROWS, 8)).astype(np.int32)
    distill = steps.DistillBatch(
        prompt, np.ones(prompt.shape, bool), priv, np.ones(priv.shape, bool)
    )
    return sft, distill


def _spec() -> steps.DistillSpec:
    sampler = rollout_lib.SamplerConfig(max_new_tokens=5, eos_id=1, pad_id=0, n_samples=2)
    return steps.DistillSpec(
        get_method("dopd"),
        get_method("dopd").make_config({"top_k": 8}),
        sampler,
        log_passes=(),
        diag_top_k=8,
    )


def _to_device(batch, mesh):
    """This process's rows as global arrays (mesh), or the whole batch (no mesh)."""
    if mesh is None:
        return batch
    rows = sharding.process_row_slice(mesh, ROWS)
    return sharding.host_local_to_global(jax.tree.map(lambda x: x[rows], batch), mesh)


def _init(cfg, seed, mesh, from_abstract: bool):
    """Initialises a model: unsharded, sharded from abstract shapes, or placed after."""
    factory = lambda: Transformer(cfg, rngs=nnx.Rngs(seed))
    if mesh is not None and from_abstract:
        return sharding.init_sharded(factory, mesh)
    graphdef, params = nnx.split(factory())
    return graphdef, params if mesh is None else sharding.shard_params(params, mesh)


def run_steps(mesh=None) -> dict:
    """Runs STEPS SFT steps, then STEPS DOPD steps; returns their losses.

    Args:
      mesh: a mesh over every process's devices, or None for one device.

    Returns:
      ``{"sft_loss": [...], "distill_loss": [...], "distill_kl": [...]}``.
    """
    opt = optax.adam(1e-2)
    sft_batch, distill_batch = _batches()
    gs, ps = _init(_model_cfg(16), 0, mesh, from_abstract=True)
    gt, pt = _init(_model_cfg(24), 1, mesh, from_abstract=False)
    state = (
        steps.init_state(ps, opt, keep_ref=False)
        if mesh is None
        else sharding.init_state_sharded(ps, opt, mesh, keep_ref=False)
    )
    sh = None if mesh is None else sharding.step_shardings(mesh, opt, state, {"teacher": pt})
    out = {"sft_loss": [], "distill_loss": [], "distill_kl": []}
    sft_fn = steps.make_sft_fn(gs, opt, shardings=sh)
    batch = _to_device(sft_batch, mesh)
    for _ in range(STEPS):
        state, m = sft_fn(state, batch)
        out["sft_loss"].append(float(m["loss"]))
    fns = steps.make_distill_fns({"student": gs, "teacher": gt}, opt, _spec(), shardings=sh)
    batch = _to_device(distill_batch, mesh)
    key = jax.random.key(0)
    for _ in range(STEPS):
        ro = fns.rollout(state, {"teacher": pt}, batch, key)
        state, m = fns.update(state, ro, fns.score(state, {"teacher": pt}, batch, ro))
        out["distill_loss"].append(float(m["loss"]))
        out["distill_kl"].append(float(m["kl_to_priv_teacher"]))
    return out


def interleaved_rows_error() -> str:
    """What feeding rows over a mesh whose data axis alternates processes gives: each
    process would own rows 0-1 and 4-5 (or 2-3 and 6-7), not a contiguous block."""
    local = [[d for d in jax.devices() if d.process_index == p] for p in range(2)]
    order = np.array([local[0][0], local[1][0], local[0][1], local[1][1]]).reshape(4, 1, 1)
    mesh = jax.sharding.Mesh(order, ("data", "fsdp", "tensor"))
    try:
        sharding.process_row_slice(mesh, ROWS)
    except ValueError as e:
        return str(e)
    return "accepted"


def main(argv) -> None:
    process_id, num_processes, port, out_path = int(argv[1]), int(argv[2]), argv[3], argv[4]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )
    try:
        result = run_steps(sharding.make_mesh(MESH_SHAPE))
        result.update(process=jax.process_index(), devices=jax.device_count())
        result["interleaved"] = interleaved_rows_error()
        with open(out_path, "w") as f:
            json.dump(result, f)
    finally:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv)
