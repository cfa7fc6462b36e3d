"""Per-device memory of a run's compiled steps, checked before the first step runs.

XLA's ``memory_analysis()`` of each compiled phase gives its arguments,
outputs, temporaries and aliased (donated) bytes per device; the estimate of a
phase is ``arguments + outputs + temp - alias``, and the run's is the largest
phase. The limit is the device's own (``memory_stats()["bytes_limit"]``, on
GPUs and TPUs) or ``distill.memory_budget_gb`` where the device reports none
(CPU). XLA:CPU computes bfloat16 in float32, so a CPU estimate over-states an
accelerator's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

GB = 1e9
KNOBS = (
    "distill.num_microbatches (more, smaller micro-batches)",
    "distill.remat=True",
    "distill.rollout_batch (fewer prompts per sampler call)",
    "distill.chunk_size (positions per full-vocabulary chunk)",
    "mesh.fsdp (shard weights and optimizer state over more devices)",
    "distill.batch_prompts / n_samples / max_new_tokens",
)


def device_limit_bytes(budget_gb: float) -> float | None:
    """The per-device memory limit: the device's, else the configured budget, else None."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    return budget_gb * GB if budget_gb > 0 else None


def _bytes(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    row = dict(
        arguments=m.argument_size_in_bytes,
        outputs=m.output_size_in_bytes,
        temp=m.temp_size_in_bytes,
        alias=m.alias_size_in_bytes,
    )
    row["total"] = row["arguments"] + row["outputs"] + row["temp"] - row["alias"]
    return row


def phase_memory(fns, state, teachers, batch, key, rewards: bool = False) -> dict:
    """``{phase: bytes by component}`` of the compiled rollout, score and update.

    Lowers each jitted phase for the given values (abstract shapes suffice for
    the later phases, taken with ``jax.eval_shape``); nothing runs. ``rewards``:
    the update reads the verifier's rewards (``Rollout.reward_B`` / ``advantage_B``).
    """
    out = {"rollout": _bytes(fns.rollout.lower(state, teachers, batch, key).compile())}
    ro = jax.eval_shape(fns.rollout, state, teachers, batch, key)
    if rewards:
        rows = jax.ShapeDtypeStruct(ro.truncated_B.shape, jnp.float32, sharding=_sharding(ro))
        ro = dataclasses.replace(ro, reward_B=rows, advantage_B=rows)
    fused = getattr(fns.update, "fused", None)  # micro-batched: scores and updates at once
    if fused is not None:
        out["update"] = _bytes(fused.lower(state, teachers, batch, ro).compile())
    else:
        out["score"] = _bytes(fns.score.lower(state, teachers, batch, ro).compile())
        targets = jax.eval_shape(fns.score, state, teachers, batch, ro)
        out["update"] = _bytes(fns.update.lower(state, ro, targets).compile())
    return {k: v for k, v in out.items() if v}


def _sharding(ro):
    return getattr(ro.truncated_B, "sharding", None)


def check(report: dict, limit: float | None, log) -> None:
    """Logs the estimate; raises ValueError naming the knobs when it exceeds ``limit``."""
    if not report:
        return
    phase, worst = max(report.items(), key=lambda kv: kv[1]["total"])
    parts = ", ".join(f"{p} {r['total'] / GB:.2f} GB" for p, r in report.items())
    where = "no limit known" if limit is None else f"limit {limit / GB:.2f} GB"
    log(f"estimated per-device memory: {parts} ({where})")
    if limit is not None and worst["total"] > limit:
        raise ValueError(
            f"the {phase} step needs an estimated {worst['total'] / GB:.2f} GB per device "
            f"(arguments {worst['arguments'] / GB:.2f}, temporaries {worst['temp'] / GB:.2f}), "
            f"above the {limit / GB:.2f} GB available; lower it with: " + "; ".join(KNOBS)
        )
