"""Our side of ``benchmarks.compare``: sampler, decode, OPD / DOPD steps, matmul peak.

Models are built from ``compare_shapes.SHAPES`` with fixed seeds and written in
Hugging Face layout (``save_hf``) so that the PyTorch side loads the very same
weights. Every figure is a ``timing.summary`` over repetitions after a
compile-and-warm-up call.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import compare_shapes, timing
from dopd_jax import steps
from dopd_jax.methods import get_method
from dopd_jax.models import ModelConfig, Transformer, save_hf
from dopd_jax.steps import rollout as rollout_lib

block = jax.block_until_ready


def model_config(s: compare_shapes.Shape) -> ModelConfig:
    return ModelConfig(
        vocab_size=s.vocab,
        d_model=s.d_model,
        n_layers=s.n_layers,
        n_heads=s.n_heads,
        n_kv_heads=s.n_kv_heads,
        head_dim=s.head_dim,
        d_ff=s.d_ff,
        qk_norm=True,
        tie_embeddings=True,
    )


def prompts(s: compare_shapes.Shape) -> tuple[np.ndarray, np.ndarray]:
    """Prompt ids [B, P] and privileged context ids [B, Q] (no padding, no id < 4)."""
    rng = np.random.default_rng(0)
    x = rng.integers(4, s.vocab, size=(s.batch, s.prompt)).astype(np.int32)
    p = rng.integers(4, s.vocab, size=(s.batch, s.priv)).astype(np.int32)
    return x, p


def build(s: compare_shapes.Shape, export_dir: str | None = None) -> dict:
    """Student (seed 0) and teacher (seed 1); written to ``export_dir`` if given."""
    cfg = model_config(s)
    models = {}
    for role, seed in (("student", 0), ("teacher", 1)):
        model = Transformer(cfg, rngs=nnx.Rngs(seed))
        if export_dir:
            save_hf(model, cfg, os.path.join(export_dir, role))
        models[role] = nnx.split(model)
    if export_dir:
        np.save(os.path.join(export_dir, "prompts.npy"), prompts(s)[0])
    return models


def matmul_peak(sizes=(1024, 2048), repeats: int = 10) -> dict:
    """float32 GFLOP/s of XLA's n x n x n matmul: the best median over ``sizes``."""
    out = {}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        mm = jax.jit(jnp.dot)
        t = timing.timed(lambda: mm(a, a), repeats, sync=block)
        out[str(n)] = {"gflops": 2 * n**3 / t["median"] / 1e9, "time_s": t}
    return {"gflops": max(r["gflops"] for r in out.values()), "by_size": out}


def read_bandwidth(megabytes: int = 256, repeats: int = 10) -> dict:
    """GB/s of a float32 sum over ``megabytes`` (the memory roofline of decode)."""
    a = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    t = timing.timed(lambda: total(a), repeats, sync=block)
    return {"gb_per_s": megabytes * 2**20 / t["median"] / 1e9, "time_s": t}


def _sampler(s, new_tokens):
    # eos_id outside the vocabulary: every row decodes all its tokens (a fixed workload).
    return rollout_lib.SamplerConfig(max_new_tokens=new_tokens, eos_id=s.vocab, pad_id=0)


def bench_sampler(s: compare_shapes.Shape, models: dict) -> dict:
    """Rollout tokens/s, and one decode step's time from full minus prefill-only runs."""
    graphdef, params = models["student"]
    x, _ = prompts(s)
    x, mask = jnp.asarray(x), jnp.ones(x.shape, bool)
    out = {}
    for name, new in (("full", s.new_tokens), ("prefill", 1)):
        fn = jax.jit(functools.partial(rollout_lib.sample, graphdef, cfg=_sampler(s, new)))
        key = jax.random.key(0)
        out[name] = timing.timed(lambda: fn(params, x, mask, key), s.repeats, sync=block)
    full, pre = out["full"]["median"], out["prefill"]["median"]
    out["tokens_per_s"] = s.batch * s.new_tokens / full
    out["decode_step_s"] = (full - pre) / (s.new_tokens - 1)
    return out


def _spec(s, method_name):
    method = get_method(method_name)
    cfg = method.make_config({"form": "analytic", "kind": "rkl"} if method_name == "opd" else {})
    return steps.DistillSpec(method, cfg, _sampler(s, s.new_tokens), log_passes=())


def distill_batch(s: compare_shapes.Shape) -> steps.DistillBatch:
    """The step's prompt batch: x, and x + p for the privileged passes (no padding)."""
    x, p = prompts(s)
    xp = np.concatenate([x, p], 1)
    return steps.DistillBatch(
        jnp.asarray(x), jnp.ones(x.shape, bool), jnp.asarray(xp), jnp.ones(xp.shape, bool)
    )


def bench_step(s: compare_shapes.Shape, models: dict, method_name: str, lr=1e-5) -> dict:
    """One on-policy step (rollout, score, update), by phase and chained."""
    spec = _spec(s, method_name)
    opt = optax.adamw(lr)
    graphdefs = {role: gd for role, (gd, _) in models.items()}
    teachers = {"teacher": models["teacher"][1]}
    fns = steps.make_distill_fns(graphdefs, opt, spec)
    params = jax.tree.map(jnp.copy, models["student"][1])
    state = [steps.init_state(params, opt, keep_ref=spec.ref_update != "none")]
    batch = distill_batch(s)
    key = jax.random.key(0)
    ro = block(fns.rollout(state[0], teachers, batch, key))
    targets = block(fns.score(state[0], teachers, batch, ro))

    def update():
        state[0], metrics = fns.update(state[0], ro, targets)
        return metrics

    def step():
        ro_ = fns.rollout(state[0], teachers, batch, key)
        state[0], metrics = fns.update(state[0], ro_, fns.score(state[0], teachers, batch, ro_))
        return metrics

    def t(fn):
        return timing.timed(fn, s.repeats, sync=block)

    return {
        "rollout": t(lambda: fns.rollout(state[0], teachers, batch, key)),
        "score": t(lambda: fns.score(state[0], teachers, batch, ro)),
        "update": t(update),
        "step": t(step),
    }
