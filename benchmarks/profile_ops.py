"""Where a decode step or an update goes, op by op: ``jax.profiler`` on one core.

  python -m benchmarks.profile_ops --shape mid --phase decode [--json OUT]
  python -m benchmarks.profile_ops --shape mid --phase update

The program runs once under ``jax.profiler.trace`` pinned to one core with
XLA's Eigen pool single-threaded, so the ops execute one after another and
each op's time is from its start to the next op's start (no overlap to
untangle). Ops are grouped by what the HLO metadata says they compute (weight
matmul forward / backward, logits, attention, sampling, ...). Times are
one-core times: compare shares, not seconds, with the two-thread benchmark.
A decode step is the scan body: ops executed once per new token.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import tempfile
import time

_NOT_OPS = ("Execute", "Threadpool", "Await", "end:")


def pin_one_core() -> None:
    """One core, single-threaded Eigen; must run before jax is imported."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """Instruction name -> (shape, opcode, op_name metadata) of compiled HLO text."""
    ops = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+) ([\w-]+)\(", line)
        if m:
            op_name = re.search(r'op_name="([^"]*)"', line)
            ops[m.group(1)] = (m.group(2).split("{")[0], m.group(3), op_name[1] if op_name else "")
    return ops


def category(opcode: str, op_name: str) -> str:
    """What an executed op computes, from its opcode and JAX op_name metadata."""
    backward = "transpose(" in op_name
    side = " backward" if backward else ""
    if any(k in op_name for k in ("sample_tokens", "_gumbel", "_uniform", "categorical")):
        return "sampling"
    if any(k in op_name for k in ("log_softmax", "logsumexp")):
        return "softmax over the vocabulary" + side
    if "btd,vd->btv" in op_name or "btd,dv->btv" in op_name:
        return "logits" + side
    if opcode == "dot" or "dot_general" in op_name:
        return "matmuls" + side
    if "dynamic_update_slice" in op_name:
        return "cache writes"
    if any(k in op_name for k in ("reduce_sum", "reduce_max", "softmax", "exp", "div")):
        return "attention and other reductions" + side
    return "other elementwise" + side


def attribute(trace_dir: str) -> list[tuple[int, int, str]]:
    """(start_ns, attributed_ns, op) for each executed op of the trace, in order."""
    import jax

    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
    events = []
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if "XLA" in line.name:
                events += [(e.start_ns, e.name) for e in line.events]
    ops = sorted(e for e in events if not any(k in e[1] for k in _NOT_OPS))
    return [(s, ops[i + 1][0] - s, n) for i, (s, n) in enumerate(ops[:-1])]


def profile(fn, args, hlo_text: str, per_call_min: int = 1) -> dict:
    """Runs ``fn(*args)`` under the profiler; times grouped by category.

    Ops executed fewer than ``per_call_min`` times are dropped (a decode
    profile keeps the scan body and drops the prefill); ``count`` divides.
    """
    import jax

    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            wall = time.perf_counter() - start
        timed = attribute(trace_dir)
    ops = hlo_ops(hlo_text)
    count = collections.Counter(n for _, _, n in timed)
    by_cat, by_op = collections.Counter(), collections.Counter()
    for _, ns, name in timed:
        if count[name] < per_call_min:
            continue
        shape, opcode, op_name = ops.get(name, ("?", "?", ""))
        by_cat[category(opcode, op_name)] += ns / 1e9 / per_call_min
        by_op[f"{name} {shape} {op_name[-70:]}"] += ns / 1e9 / per_call_min
    total = sum(by_cat.values())
    return {
        "wall_s_under_profiler": wall,
        "attributed_s": total,
        "categories": {k: {"s": v, "share": v / total} for k, v in by_cat.most_common()},
        "top_ops": {k: v for k, v in by_op.most_common(20)},
    }


def _decode(shape, new_tokens: int):
    import functools

    import jax
    import jax.numpy as jnp

    from benchmarks import compare_jax
    from dopd_jax.steps import rollout as rollout_lib

    graphdef, params = compare_jax.build(shape)["student"]
    x, _ = compare_jax.prompts(shape)
    cfg = compare_jax._sampler(shape, new_tokens)
    fn = jax.jit(functools.partial(rollout_lib.sample, graphdef, cfg=cfg))
    args = (params, jnp.asarray(x), jnp.ones(x.shape, bool), jax.random.key(0))
    return fn, args, new_tokens - 1


def _update(shape):
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    from benchmarks import compare_jax
    from dopd_jax import steps

    models = compare_jax.build(shape)
    spec = compare_jax._spec(shape, "opd")
    opt = optax.adamw(1e-5)
    graphdefs = {role: gd for role, (gd, _) in models.items()}
    fns = steps.make_distill_fns(graphdefs, opt, spec)
    state = steps.init_state(jax.tree.map(jnp.copy, models["student"][1]), opt, keep_ref=False)
    teachers = {"teacher": models["teacher"][1]}
    batch = compare_jax.distill_batch(shape)
    ro = fns.rollout(state, teachers, batch, jax.random.key(0))
    targets = fns.score(state, teachers, batch, ro)
    # Not donated (unlike make_distill_fns' update), so it can run twice on one state.
    update = jax.jit(functools.partial(steps.update_step, graphdefs, opt, spec))
    return update, (state, ro, targets), 1


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mid", help="a compare_shapes.SHAPES name")
    parser.add_argument("--phase", choices=("decode", "update"), default="decode")
    parser.add_argument("--new-tokens", type=int, default=17, help="decode: tokens sampled")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    pin_one_core()
    import jax

    from benchmarks import compare_shapes

    shape = compare_shapes.shape(args.shape)
    if args.phase == "decode":
        fn, fn_args, per_call = _decode(shape, args.new_tokens)
    else:
        fn, fn_args, per_call = _update(shape)
    jax.block_until_ready(fn(*fn_args))  # compile and warm up
    hlo = fn.lower(*fn_args).compile().as_text()
    out = dict(shape=args.shape, phase=args.phase, **profile(fn, fn_args, hlo, per_call))
    unit = "per decode step" if args.phase == "decode" else "per update"
    print(f"{args.shape} {args.phase}: {out['attributed_s'] * 1e3:.1f} ms {unit} on one core")
    for name, c in out["categories"].items():
        print(f"  {c['share']:6.1%}  {c['s'] * 1e3:9.2f} ms  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
