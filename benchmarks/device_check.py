"""One short accelerator check: bf16 numerics and speed against the roofline.

    python -m benchmarks.device_check [--json OUT]

1. Mixed precision on the accelerator's own bf16 matmuls: the weight change of
   10 AdamW steps at lr 5e-6, float32 master + bfloat16 compute vs float32
   training (relative L2), and the naive bfloat16-parameter update.
2. Sampler decode at a Qwen3-0.6B-like shape (28 layers, d 1024, V 151,936 with
   151,669 real ids), bf16 compute, 64 prompts of 128 tokens + 256 new tokens:
   ms per decode step and its fraction of the memory-bandwidth roofline (weights
   + KV cache read once per step).
3. The fused micro-batched DOPD update (float32 master, bf16 compute, remat) at
   that shape against itself as teacher: seconds per step and model-FLOP
   utilisation over the dense bf16 peak given by --peak_tflops.
Needs only jax, flax, optax (no TFDS, grain or ml_collections).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dopd_jax.data.batches import PromptBatch, SFTBatch
from dopd_jax.methods import get_method
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.state import init_state
from dopd_jax.steps import DistillSpec, SamplerConfig, microbatch, rollout, sft

QWEN3_0P6B = ModelConfig(
    vocab_size=151936, d_model=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128,
    d_ff=3072, rope_theta=1e6, qk_norm=True, tie_embeddings=True, valid_vocab_size=151669,
    param_dtype="bfloat16", dtype="bfloat16",
)  # fmt: skip


def _median_time(fn, n=5):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times)), float(np.max(times))


def mixed_precision() -> dict:
    cfg = ModelConfig(
        vocab_size=512, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64, d_ff=512
    )
    _, params0 = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(10):
        toks = rng.integers(0, 512, (16, 65)).astype(np.int32)
        ones = np.ones((16, 64), bool)
        batches.append(SFTBatch(toks[:, :-1], toks[:, 1:], ones, ones))

    def change(param_dtype, dtype):
        c = dataclasses.replace(cfg, param_dtype=param_dtype, dtype=dtype)
        gd = nnx.split(nnx.eval_shape(lambda: Transformer(c, rngs=nnx.Rngs(0))), nnx.Param)[0]
        start = jax.tree.map(lambda p: p.astype(param_dtype), params0)
        opt = optax.adamw(5e-6, weight_decay=0.0)
        state = init_state(start, opt, keep_ref=False)
        step = jax.jit(lambda s, b: sft.sft_step(gd, opt, s, b))
        for b in batches:
            state, _ = step(state, b)
        d = jax.tree.map(lambda a, b: a.astype(jnp.float32) - b, state.params, start)
        return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(d)])

    ref, master, naive = (
        change("float32", "float32"),
        change("float32", "bfloat16"),
        change("bfloat16", "bfloat16"),
    )
    rel = lambda x: float(np.linalg.norm(x - ref) / np.linalg.norm(ref))
    return dict(
        master_rel_err=rel(master),
        naive_rel_err=rel(naive),
        master_frac_moved=float(np.mean(master != 0)),
        naive_frac_moved=float(np.mean(naive != 0)),
    )


def _weights_bytes(params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def decode_speed(cfg, bw_tbps: float, b=64, p=128, t=256) -> dict:
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    prompt = jax.random.randint(jax.random.key(0), (b, p), 2, 1000).astype(jnp.int32)
    mask = jnp.ones((b, p), bool)
    out = {}
    for new in (1, t):
        sc = SamplerConfig(max_new_tokens=new, eos_id=-1, pad_id=0)
        fn = jax.jit(functools.partial(rollout.sample, graphdef, cfg=sc))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, prompt, mask, jax.random.key(1)))
        out[f"compile_s_{new}"] = time.perf_counter() - t0
        out[new] = _median_time(lambda: fn(params, prompt, mask, jax.random.key(2)), n=3)
    step_s = (out[t][0] - out[1][0]) / (t - 1)
    kv = 2 * cfg.n_layers * b * (p + t / 2) * cfg.n_kv_heads * cfg.head_dim * 2  # mean cache
    weights = _weights_bytes(params) - (cfg.vocab_size - cfg.logit_vocab_size) * cfg.d_model * 2
    roofline_s = (weights + kv) / (bw_tbps * 1e12)
    return dict(
        decode_ms_per_step=step_s * 1e3,
        prefill_ms=out[1][0] * 1e3,
        tokens_per_s=b * t / out[t][0],
        roofline_ms_per_step=roofline_s * 1e3,
        fraction_of_bandwidth_roofline=roofline_s / step_s,
        compile_s=out[f"compile_s_{t}"],
    )


def update_speed(cfg, peak_tflops: float, prompts=16, n=4, p=128, t=256, m=4) -> dict:
    student_cfg = dataclasses.replace(cfg, param_dtype="float32")
    gd_t, teacher = nnx.split(Transformer(cfg, rngs=nnx.Rngs(1)))
    gd_s, student = nnx.split(Transformer(student_cfg, rngs=nnx.Rngs(0)))
    method = get_method("dopd")
    spec = DistillSpec(
        method=method,
        config=method.make_config({"top_k": 128}, "device_check"),
        sampler=SamplerConfig(max_new_tokens=t, eos_id=-1, pad_id=0, n_samples=n),
        log_passes=("teacher",),
        chunk_size=256,
    )
    opt = optax.adamw(5e-6)
    state = init_state(student, opt, keep_ref=False)
    fns = microbatch.make_microbatched_fns(
        {"student": gd_s, "teacher": gd_t}, opt, spec, m, remat=True
    )
    ids = lambda shape, k: jax.random.randint(jax.random.key(k), shape, 2, 1000).astype(jnp.int32)
    ones = lambda shape: jnp.ones(shape, bool)
    batch = PromptBatch(
        ids((prompts, p), 0), ones((prompts, p)), ids((prompts, 2 * p), 1), ones((prompts, 2 * p))
    )
    ro = jax.block_until_ready(fns.rollout(state, {"teacher": teacher}, batch, jax.random.key(0)))
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(
        fns.update(state, ro, fns.score(state, {"teacher": teacher}, batch, ro))
    )
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        state, metrics = jax.block_until_ready(
            fns.update(state, ro, fns.score(state, {"teacher": teacher}, batch, ro))
        )
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    n_params = sum(x.size for x in jax.tree.leaves(student))
    rows, tokens_s, tokens_t = prompts * n, p + t, 2 * p + t
    # Student: forward + backward (6N) + remat forward (2N) over its tokens; three
    # forward passes (privileged student, privileged teacher, plain teacher) twice for
    # the two DOPD passes of the fused step (2N each).
    flops = rows * (8 * n_params * tokens_s + 2 * 2 * n_params * (2 * tokens_t + tokens_s))
    return dict(
        update_s=step_s,
        update_compile_s=compile_s,
        model_tflops_per_step=flops / 1e12,
        mfu=flops / step_s / (peak_tflops * 1e12),
        loss_finite=bool(np.isfinite(float(metrics["loss"]))),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="")
    ap.add_argument("--bw_tbps", type=float, default=3.35)  # H100 SXM HBM3
    ap.add_argument("--peak_tflops", type=float, default=989.0)  # H100 SXM dense bf16
    ap.add_argument("--layers", type=int, default=QWEN3_0P6B.n_layers)
    args = ap.parse_args()
    cfg = dataclasses.replace(QWEN3_0P6B, n_layers=args.layers)
    out = dict(device=str(jax.devices()[0]), jax=jax.__version__)
    for name, fn in (
        ("mixed_precision", mixed_precision),
        ("decode", lambda: decode_speed(cfg, args.bw_tbps)),
        ("update", lambda: update_speed(cfg, args.peak_tflops)),
    ):
        t0 = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 (report and go on: one run, limited time)
            out[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        out[name]["wall_s"] = time.perf_counter() - t0
        print(json.dumps({name: out[name]}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
