"""Side-by-side step timings: sampler throughput, OPD vs DOPD step time.

Run:  python benchmarks/bench_steps.py [--repeats 20] [--out bench.json]

Models are the main experiment's sizes (teacher 3x d96, student 2x d64, V=64,
16 prompts x 4 samples, 32 new tokens). Every number is the median wall time
of ``--repeats`` calls after a compile-and-warm-up call, on whatever devices
JAX sees; the report gives DOPD / OPD as a ratio measured in the same run.

``lean_over_logged``: score + update of a step the host loop does not log
(``DistillFns.phase_fns(False)``: no diagnostic passes, no per-token
diagnostics) over a logged one, with ``DistillSpec``'s default diagnostics
(KLs to the plain and the privileged teacher; top-K statistics, K = 128 clamped
to V), per method.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dopd_jax import steps
from dopd_jax.methods import get_method
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.steps import rollout as rollout_lib

V, P, Q, T = 64, 16, 32, 32


def _model(seed, d, layers, d_ff):
    cfg = ModelConfig(
        vocab_size=V,
        d_model=d,
        n_layers=layers,
        n_heads=4,
        n_kv_heads=2,
        head_dim=d // 4,
        d_ff=d_ff,
        qk_norm=True,
    )
    return nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))


def _batch(rng, b):
    def left_padded(width, lo):
        lens = rng.integers(lo, width + 1, size=b)
        ids = rng.integers(4, V, size=(b, width)).astype(np.int32)
        mask = np.arange(width)[None] >= (width - lens)[:, None]
        return jnp.asarray(np.where(mask, ids, 0)), jnp.asarray(mask)

    prompt, pmask = left_padded(P, 8)
    priv, qmask = left_padded(Q, 20)
    return steps.DistillBatch(prompt, pmask, priv, qmask)


def _median_time(fn, repeats):
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(repeats: int, batch_prompts: int = 16, n_samples: int = 4) -> dict:
    gs, ps = _model(0, 64, 2, 192)
    gt, pt = _model(1, 96, 3, 256)
    batch = _batch(np.random.default_rng(0), batch_prompts)
    # eos_id outside the vocabulary: every row decodes all T tokens (a fixed workload).
    sampler = rollout_lib.SamplerConfig(max_new_tokens=T, eos_id=V, pad_id=0, n_samples=n_samples)
    opt = optax.adamw(1e-4)
    out = {"devices": str(jax.devices()), "rows": batch_prompts * n_samples, "new_tokens": T}
    for name in ("opd", "dopd"):
        method = get_method(name)
        cfg = method.make_config({"top_k": 16} if name == "dopd" else {})
        spec = steps.DistillSpec(method, cfg, sampler, log_passes=(), diag_top_k=16)
        graphdefs, teachers = {"student": gs, "teacher": gt}, {"teacher": pt}
        fns = steps.make_distill_fns(graphdefs, opt, spec)
        state = steps.init_state(jax.tree.map(jnp.copy, ps), opt, keep_ref=False)
        key = jax.random.key(0)
        ro = fns.rollout(state, teachers, batch, key)
        targets = fns.score(state, teachers, batch, ro)
        out[f"{name}_rollout_s"] = _median_time(
            lambda: fns.rollout(state, teachers, batch, key), repeats
        )
        out[f"{name}_score_s"] = _median_time(
            lambda: fns.score(state, teachers, batch, ro), repeats
        )
        upd = jax.jit(
            lambda s, r, t: steps.update_step(graphdefs, opt, spec, s, r, t)
        )  # no donation
        out[f"{name}_update_s"] = _median_time(lambda: upd(state, ro, targets), repeats)
        out[f"{name}_step_s"] = sum(out[f"{name}_{p}_s"] for p in ("rollout", "score", "update"))
    out.update(bench_lean(repeats, gs, ps, gt, pt, batch, sampler, opt))
    out["sampler_tokens_per_s"] = out["rows"] * T / out["opd_rollout_s"]
    out["dopd_over_opd_step"] = out["dopd_step_s"] / out["opd_step_s"]
    out["dopd_over_opd_score"] = out["dopd_score_s"] / out["opd_score_s"]
    return out


def bench_lean(repeats, gs, ps, gt, pt, batch, sampler, opt) -> dict:
    """Score + update of a logged step and of a lean one, per method (see the docstring)."""
    out = {}
    graphdefs, teachers = {"student": gs, "teacher": gt}, {"teacher": pt}
    for name in ("opd", "dopd"):
        method = get_method(name)
        spec = steps.DistillSpec(method, method.make_config({}), sampler)  # default log passes
        fns = steps.make_distill_fns(graphdefs, opt, spec)
        state = steps.init_state(jax.tree.map(jnp.copy, ps), opt, keep_ref=False)
        ro = fns.rollout(state, teachers, batch, jax.random.key(0))
        lean = steps.distill.lean_spec(spec)
        for kind, log, sp in (("logged", True, spec), ("lean", False, lean)):
            score, _ = fns.phase_fns(log)
            # no donation: the same state every call
            upd = jax.jit(functools.partial(steps.update_step, graphdefs, opt, sp, diagnostics=log))
            out[f"{name}_{kind}_score_update_s"] = _median_time(
                lambda: upd(state, ro, score(state, teachers, batch, ro)), repeats
            )
        out[f"{name}_lean_over_logged"] = (
            out[f"{name}_lean_score_update_s"] / out[f"{name}_logged_score_update_s"]
        )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    res = bench(args.repeats)
    for k, v in res.items():
        print(f"{k:>24}: {v:.4g}" if isinstance(v, float) else f"{k:>24}: {v}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
