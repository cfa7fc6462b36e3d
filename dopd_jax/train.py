"""Host loops: SFT (teachers, student warm-up) and on-policy distillation.

The loops own the host side only: batches in, jitted step functions, metrics
out. All math lives in ``steps`` and below, so the same functions serve the
CLI, tests and notebooks.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator

import jax
import numpy as np
import optax

from dopd_jax import steps as steps_lib
from dopd_jax.data import tasks
from dopd_jax.monitor import CollapseMonitor


def make_optimizer(lr: float, warmup_steps: int, total_steps: int,
                   weight_decay: float = 0.0, clip_norm: float = 1.0):
    """AdamW with linear warm-up, cosine decay and global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, max(warmup_steps, 1), max(total_steps, warmup_steps + 1), end_value=lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(clip_norm),
                       optax.adamw(schedule, weight_decay=weight_decay))


@dataclasses.dataclass
class LoopHooks:
    """Side effects of a loop: metric sink, progress callback, periodic eval."""

    write: Callable[[int, dict], None] = lambda step, m: None
    progress: Callable[[int, dict], None] = lambda step, m: None
    evaluate: Callable[[int, object], dict] | None = None  # (step, params) -> metrics
    eval_every: int = 0
    log_every: int = 10
    warn: Callable[[str], None] = print


def run_sft(sft_fn, state, batches: Iterator, num_steps: int, hooks: LoopHooks):
    """Runs ``num_steps`` SFT steps; dispatches step n+1 before reading step n."""
    pending = None
    for step in range(num_steps):
        batch = steps_lib.SFTBatch(**next(batches))
        state, metrics = sft_fn(state, batch)
        if pending is not None:
            _emit(hooks, *pending)
        pending = (step, metrics) if (step + 1) % hooks.log_every == 0 or step + 1 == num_steps else None
    if pending is not None:
        _emit(hooks, *pending)
    return state


def _emit(hooks: LoopHooks, step: int, metrics) -> dict:
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    hooks.write(step + 1, host)
    hooks.progress(step + 1, host)
    return host


def rollout_reward(tok, examples, n_samples: int, ro) -> float:
    """Fraction of sampled responses the verifier accepts (host side)."""
    tokens_BT, mask_BT = jax.device_get((ro.tokens_BT, ro.mask_BT))
    ok = []
    for row in range(tokens_BT.shape[0]):
        text = tok.decode([int(t) for t in tokens_BT[row][mask_BT[row]]])
        ok.append(tasks.verify(examples[row // n_samples], text))
    return float(np.mean(ok))


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def run_distill(fns: steps_lib.DistillFns, state, teacher_params, batches: Iterator,
                num_steps: int, key, hooks: LoopHooks, *, tok, n_samples: int):
    """Runs the on-policy loop, logging methods.md section 9 metrics.

    ``batches`` yields ``(examples, DistillBatch)``. Each phase is blocked on
    so the rollout / scoring / update split is real wall time.
    """
    monitor = CollapseMonitor()
    for step in range(num_steps):
        examples, batch = next(batches)
        ro, t_roll = _timed(fns.rollout, state, batch, key)
        targets, t_score = _timed(fns.score, state, teacher_params, batch, ro)
        (state, metrics), t_upd = _timed(fns.update, state, ro, targets)
        if (step + 1) % hooks.log_every and step + 1 != num_steps:
            continue
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        total = t_roll + t_score + t_upd
        host.update(time_rollout=t_roll, time_score=t_score, time_update=t_upd,
                    tokens_per_sec=host["num_tokens"] / total,
                    reward=rollout_reward(tok, examples, n_samples, ro))
        if hooks.evaluate is not None and hooks.eval_every and (step + 1) % hooks.eval_every == 0:
            host.update(hooks.evaluate(step + 1, state.params))
        for msg in monitor.update(step + 1, host):
            hooks.warn(msg)
            host.setdefault("warnings", 0.0)
            host["warnings"] += 1
        hooks.write(step + 1, host)
        hooks.progress(step + 1, host)
    return state, monitor
