"""Per-device memory of the paper-scale DOPD step (Qwen3-8B -> Qwen3-1.7B) on 8 devices.

Run:  python benchmarks/paper_scale_memory.py [--rollout] [--out mem.json]

Nothing runs and no weight exists: the fused micro-batched score + update step
(``dopd_jax.microbatch``) of ``experiments/qwen3_8b_to_1p7b.py`` is lowered for
abstract inputs (``jax.ShapeDtypeStruct`` with NamedShardings) on 8 simulated
CPU devices and compiled; the numbers are XLA's ``memory_analysis()`` of one
device's program: arguments, outputs, temp, aliased (donated state reused for
the output) and total = arguments + outputs + temp - aliased.

Every plan is compiled at full depth (36 teacher + 28 student layers): the
step scans over stacked layers (``microbatch.forward_logits``), so a compile
takes ~30 s whatever the depth. The sampler (``--rollout``) unrolls its layers
(``Transformer.decode``) and compiles in ~15 s. XLA:CPU keeps bf16 math in
float32 (no native bf16), so temp over-estimates GPU/TPU memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import time
import types

if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from dopd_jax import sharding, steps  # noqa: E402
from dopd_jax.models import ModelConfig, Transformer  # noqa: E402
from dopd_jax.pipeline import distill_stage, sft_stage, specs  # noqa: E402
from dopd_jax.steps import microbatch  # noqa: E402
from dopd_jax.steps import rollout as rollout_lib  # noqa: E402

GB = 1e9
EXPERIMENT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "qwen3_8b_to_1p7b.py"
KEYS = ("arguments", "outputs", "temp", "alias", "total")
QWEN3_VOCAB = 151936  # embedding rows of both Qwen3 checkpoints


def paper_config(arg=None):
    """``experiments/qwen3_8b_to_1p7b.py``'s ``get_config(arg)``."""
    spec = importlib.util.spec_from_file_location("qwen3_8b_to_1p7b", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def model_configs(c, layers=None) -> tuple[ModelConfig, ModelConfig]:
    """Teacher and student ModelConfigs, optionally at depths ``layers = (t, s)``."""
    cfgs = [
        ModelConfig(vocab_size=QWEN3_VOCAB, **c[role].model.to_dict())
        for role in ("teacher", "student")
    ]
    if layers is not None:
        cfgs = [dataclasses.replace(m, n_layers=n) for m, n in zip(cfgs, layers)]
    return cfgs[0], cfgs[1]


def _sds(abstract, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )


def _abstract_model(cfg):
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def _abstract_data(c, spec):
    """DistillBatch and Rollout shapes of one step (prompts x n_samples rows)."""
    prompts, rows = c.distill.batch_prompts, c.distill.batch_prompts * spec.sampler.n_samples
    p, q, t = c.task.max_prompt_len, c.task.max_priv_len, spec.sampler.max_new_tokens
    s = jax.ShapeDtypeStruct
    batch = steps.DistillBatch(
        s((prompts, p), jnp.int32),
        s((prompts, p), bool),
        s((prompts, q), jnp.int32),
        s((prompts, q), bool),
    )
    ro = rollout_lib.Rollout(
        s((rows, p), jnp.int32),
        s((rows, p), bool),
        s((rows, t), jnp.int32),
        s((rows, t), bool),
        s((rows, t), jnp.float32),
        s((rows,), bool),
    )
    return batch, ro


def distill_spec(c, method="dopd") -> steps.DistillSpec:
    """The step description of the config's distillation (``method``)."""
    tok = types.SimpleNamespace(eos_id=1, pad_id=0)  # ids only matter to the sampler's values
    return distill_stage.make_spec(specs.run_spec(c, method), tok)


def abstract_step(c, mesh_shape, layers=None, method="dopd"):
    """Everything a step is lowered with, as sharded abstract values.

    Args:
      c: the paper config.
      mesh_shape: ``{axis: size}`` for ``sharding.make_mesh``, or None for
        one device and no shardings.
      layers: ``(teacher, student)`` depths, or None for the config's.
      method: distillation method.

    Returns:
      dict with graphdefs ``gd_s``, ``gd_t``, ``optimizer``, ``spec``,
      ``shardings`` (StepShardings or None) and the abstract ``state``,
      ``teacher``, ``batch``, ``ro``.
    """
    cfg_t, cfg_s = model_configs(c, layers)
    (gd_t, abs_t), (gd_s, abs_s) = _abstract_model(cfg_t), _abstract_model(cfg_s)
    opt = sft_stage.make_optimizer(specs.run_spec(c, method).optim)
    spec = distill_spec(c, method)
    state = jax.eval_shape(lambda p: steps.init_state(p, opt, keep_ref=False), abs_s)
    batch, ro = _abstract_data(c, spec)
    out = dict(
        gd_s=gd_s,
        gd_t=gd_t,
        optimizer=opt,
        spec=spec,
        shardings=None,
        state=state,
        teacher={"teacher": abs_t},
        batch=batch,
        ro=ro,
    )
    if mesh_shape is None:
        return out
    mesh = sharding.make_mesh(mesh_shape, devices=jax.devices()[:8])
    sh = sharding.step_shardings(mesh, opt, state, {"teacher": abs_t})
    rows = lambda tree: _sds(tree, jax.tree.map(lambda _: sh.rows, tree))
    return dict(
        out,
        shardings=sh,
        state=_sds(state, sh.state),
        teacher=_sds({"teacher": abs_t}, sh.teachers),
        batch=rows(batch),
        ro=rows(ro),
    )


def _memory(compiled, seconds) -> dict:
    m = compiled.memory_analysis()
    row = {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "temp": m.temp_size_in_bytes,
        "alias": m.alias_size_in_bytes,
    }
    row["total"] = row["arguments"] + row["outputs"] + row["temp"] - row["alias"]
    return dict(row, compile_s=seconds)


def step_memory(c, mesh_shape, num_microbatches, layers=None, remat=True, method="dopd"):
    """Compiles the micro-batched step; per-device bytes by component (+ compile seconds)."""
    a = abstract_step(c, mesh_shape, layers, method)
    graphdefs = {"student": a["gd_s"], "teacher": a["gd_t"]}
    step = microbatch.make_microbatched_update(
        graphdefs, a["optimizer"], a["spec"], num_microbatches, a["shardings"], remat=remat
    )
    start = time.perf_counter()
    compiled = step.lower(a["state"], a["teacher"], a["batch"], a["ro"]).compile()
    return _memory(compiled, time.perf_counter() - start)


def rollout_memory(c, mesh_shape, layers=None):
    """Compiles the sampler (``steps.rollout_step``); per-device bytes by component."""
    a = abstract_step(c, mesh_shape, layers)
    sh = a["shardings"]
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sh.replicated)
    fn = jax.jit(
        lambda s, t, b, k: steps.rollout_step({"student": a["gd_s"]}, a["spec"], s, t, b, k),
        **sh.jit_kwargs("rollout"),
    )
    start = time.perf_counter()
    compiled = fn.lower(a["state"], a["teacher"], a["batch"], key).compile()
    return _memory(compiled, time.perf_counter() - start)


PLANS = (  # (label, mesh shape or None for one device without shardings, M, remat)
    ("fsdp=8", {"fsdp": 8}, 64, True),
    ("fsdp=8", {"fsdp": 8}, 32, True),
    ("fsdp=8", {"fsdp": 8}, 16, True),
    ("fsdp=8", {"fsdp": 8}, 8, True),
    ("fsdp=8 no remat", {"fsdp": 8}, 64, False),
    ("data=2,fsdp=4", {"data": 2, "fsdp": 4}, 64, True),
    ("data=2,fsdp=4", {"data": 2, "fsdp": 4}, 16, True),
    ("fsdp=4,tensor=2", {"fsdp": 4, "tensor": 2}, 128, True),
    ("fsdp=4,tensor=2", {"fsdp": 4, "tensor": 2}, 32, True),
    ("1 device, unsharded", None, 1, True),
)


def _print_row(label, m, row):
    cells = " ".join(f"{row[k] / GB:>9.2f}" for k in KEYS)
    print(f"{label:<22} {m:>4} {cells} {row['compile_s']:>9.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rollout",
        action="store_true",
        help="also the sampler, for 128, 32, 16 and 8 prompts per call",
    )
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    c = paper_config()
    print(
        f"{'plan':<22} {'M':>4} " + " ".join(f"{k + ' GB':>9}" for k in KEYS) + f" {'compile s':>9}"
    )
    rows = []
    for label, mesh_shape, m, remat in PLANS:
        row = step_memory(c, mesh_shape, m, remat=remat)
        _print_row(label, m, row)
        rows.append(dict(row, plan=label, mesh=mesh_shape, microbatches=m, remat=remat))
    for prompts in (128, 32, 16, 8) if args.rollout else ():
        with c.unlocked():
            c.distill.batch_prompts = prompts
        row = rollout_memory(c, {"fsdp": 8})
        _print_row(f"sampler {prompts} prompts", "-", row)
        rows.append(dict(row, plan="sampler", mesh={"fsdp": 8}, prompts=prompts))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
