"""Side-by-side speed against the tools users would otherwise use.

  python -m benchmarks.compare --json OUT [--shapes tiny,mid] [--repeats N]

For each shape of ``compare_shapes`` (same Qwen3-architecture models and
random weights on both sides, float32), in one process tree on this machine:
our side runs in this process (``compare_jax``), the peers' side in a child
process (``compare_torch``: Hugging Face ``generate`` and TRL's
``DistillationTrainer``), one after the other, never at once. OUT gets, per
shape, the figures below, each a median over repetitions after a warm-up with
its range (``min``/``max`` from the extremes of the two sides), and every raw
timing they come from:

  sampler_speedup_vs_hf_generate  our rollout tokens/s over HF generate's
  step_speedup_vs_trl             TRL step time over our vanilla OPD step time
  dopd_over_opd_step_time         our DOPD step over our OPD step
  update_mfu                      update-phase model FLOPs/s over the matmul peak
  decode_fraction_of_peak         one decode step's FLOPs/s over the same peak
  decode_fraction_of_bandwidth    the bytes it must read (weights, filled KV cache)
                                  per second over a measured read bandwidth

and at top level ``loss_peak_memory_ratio``: the scratch memory of the DOPD loss
and its gradient chunked (256 positions) over unchunked, at V = 151,936 and
2,048 response tokens, from XLA's memory analysis (``bench_loss_memory``). The peak
is the best of XLA's and PyTorch's float32 matmuls (n = 1,024 and 2,048), measured
in the run; the read bandwidth is XLA's float32 sum over 256 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax

from benchmarks import bench_loss_memory, compare_jax, compare_shapes, timing


def peers(name: str, models_dir: str, repeats: int) -> dict:
    out = os.path.join(models_dir, "torch.json")
    cmd = [sys.executable, "-m", "benchmarks.compare_torch", "--shape", name]
    cmd += ["--models", models_dir, "--out", out, "--repeats", str(repeats)]
    subprocess.run(cmd, check=True)
    with open(out) as f:
        return json.load(f)


def _scaled(x: dict, factor: float) -> dict:
    return {k: x[k] * factor for k in ("median", "min", "max")}


def figures(s: compare_shapes.Shape, ours: dict, theirs: dict) -> dict:
    """The five ratios of one shape from the raw timings of both sides."""
    peak = max(ours["matmul_peak"]["gflops"], theirs["matmul_peak"]["gflops"]) * 1e9
    sampler, opd, dopd = ours["sampler"], ours["opd"], ours["dopd"]
    u = opd["update"]
    update_rate = {"median": 1 / u["median"], "min": 1 / u["max"], "max": 1 / u["min"]}
    return {
        "sampler_speedup_vs_hf_generate": timing.ratio(
            theirs["hf_generate"]["time_s"], sampler["full"]
        ),
        "step_speedup_vs_trl": timing.ratio(theirs["trl_step"]["step_s"], opd["step"]),
        "dopd_over_opd_step_time": timing.ratio(dopd["step"], opd["step"]),
        "update_mfu": _scaled(update_rate, compare_shapes.update_flops(s) / peak),
        "decode_fraction_of_peak": compare_shapes.decode_step_flops(s)
        / sampler["decode_step_s"]
        / peak,
        "decode_fraction_of_bandwidth": compare_shapes.decode_step_bytes(s)
        / sampler["decode_step_s"]
        / (ours["read_bandwidth"]["gb_per_s"] * 1e9),
        "peak_gflops": peak / 1e9,
    }


def compare_shape(name: str, repeats: int = 0) -> dict:
    s = compare_shapes.shape(name, repeats)
    with tempfile.TemporaryDirectory() as models_dir:
        models = compare_jax.build(s, models_dir)
        t0 = time.perf_counter()
        theirs = peers(name, models_dir, s.repeats)
        t1 = time.perf_counter()
        ours = {
            "matmul_peak": compare_jax.matmul_peak(),
            "read_bandwidth": compare_jax.read_bandwidth(),
            "sampler": compare_jax.bench_sampler(s, models),
            "opd": compare_jax.bench_step(s, models, "opd"),
            "dopd": compare_jax.bench_step(s, models, "dopd"),
        }
    wall = {"peers_s": t1 - t0, "ours_s": time.perf_counter() - t1}
    return {
        "shape": vars(s),
        "figures": figures(s, ours, theirs),
        "ours": ours,
        "peers": theirs,
        "wall": wall,
    }


def loss_memory(vocab: int = 151936, seq: int = 2048, chunk: int = 256) -> dict:
    """Scratch memory of the float32 DOPD loss + gradient, chunked over unchunked.

    The defaults are the paper config's (``experiments/qwen3_8b_to_1p7b.py``):
    2,048 response tokens, chunks of 256 positions.
    """
    rows = {
        c: bench_loss_memory._compiled_memory(1, seq, vocab, c, dtype=jax.numpy.float32)
        for c in (chunk, None)
    }
    ratio = rows[chunk]["temp_gib"] / rows[None]["temp_gib"]
    return {"ratio": ratio, "chunked": rows[chunk], "unchunked": rows[None]}


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "devices": str(jax.devices()),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="output file")
    ap.add_argument("--shapes", default="tiny,mid")
    ap.add_argument("--repeats", type=int, default=0, help="0: each shape's own")
    args = ap.parse_args(argv)
    names = [n for n in args.shapes.split(",") if n]
    bad = [n for n in names if n not in compare_shapes.SHAPES]
    if bad:
        ap.error(f"unknown shape {bad[0]!r}; choose from {sorted(compare_shapes.SHAPES)}")
    result = {"machine": machine()}
    for name in names:
        result[name] = compare_shape(name, args.repeats)
        print(name, json.dumps(result[name]["figures"], indent=1), flush=True)
    mem = loss_memory()
    result["loss_peak_memory_ratio"] = mem["ratio"]
    result["loss_memory"] = mem
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print("loss_peak_memory_ratio", mem["ratio"])


if __name__ == "__main__":
    main()
