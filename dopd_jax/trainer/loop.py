"""Host loops: SFT (teachers, student warm-up) and on-policy distillation.

The loops own the host side only: batches in, jitted step functions, metrics
out. All math lives in ``steps`` and below, so the same functions serve the
CLI, tests and notebooks.

Checkpointing is a hook: after every ``checkpoint_every``-th step, after the
last step, and after the step during which SIGTERM arrived (see
``sigterm_flag``), the loops flush pending metrics and call
``hooks.checkpoint(steps_done, state)``; on SIGTERM they then raise
``Interrupted``. A resumed loop starts at ``start_step`` with the restored
state, monitor and data iterator.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
import optax

from dopd_jax import sharding, steps as steps_lib
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
    """Side effects of a loop: metric sink, progress, periodic eval, checkpoints, stop flag."""

    write: Callable[[int, dict], None] = lambda step, m: None
    progress: Callable[[int, dict], None] = lambda step, m: None
    evaluate: Callable[[int, object], dict] | None = None  # (step, params) -> metrics
    eval_every: int = 0
    log_every: int = 10
    warn: Callable[[str], None] = print
    checkpoint: Callable[[int, Any], None] | None = None  # (steps done, state) -> None
    checkpoint_every: int = 0  # 0: only after the last step (and on SIGTERM)
    stop_requested: Callable[[], bool] = lambda: False


class Interrupted(SystemExit):
    """Raised after the step during which SIGTERM arrived (exit status 128 + 15)."""

    def __init__(self, step: int):
        super().__init__(128 + signal.SIGTERM)
        self.step = step


@contextlib.contextmanager
def sigterm_flag():
    """Within the block, SIGTERM only sets a flag; yields a callable reading it.

    The loops poll it after each step (``LoopHooks.stop_requested``), so the
    current step finishes and a final checkpoint is written before exiting.
    Outside the main thread (where handlers cannot be installed) the flag
    never rises and SIGTERM keeps its previous behaviour.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


def _after_step(hooks: LoopHooks, done: int, num_steps: int, state, flush) -> None:
    """Checkpoints when due (or when asked to stop), then honours the stop request."""
    stop = hooks.stop_requested()
    every = hooks.checkpoint_every
    if hooks.checkpoint is not None and (stop or done == num_steps or (every and done % every == 0)):
        flush()
        hooks.checkpoint(done, state)
    if stop:
        flush()
        hooks.warn(f"SIGTERM: stopped after step {done}"
                   + (" and saved a checkpoint" if hooks.checkpoint else "")
                   + "; rerun the same command to resume")
        raise Interrupted(done)


def _is_log_step(hooks: LoopHooks, step: int, num_steps: int) -> bool:
    return (step + 1) % hooks.log_every == 0 or step + 1 == num_steps


def run_sft(sft_fn, state, batches: Iterator, num_steps: int, hooks: LoopHooks, *,
            start_step: int = 0):
    """Runs SFT steps ``start_step .. num_steps - 1``; dispatches step n+1 before reading step n.

    Args:
      sft_fn: jitted ``(state, SFTBatch) -> (state, metrics)``.
      state: the TrainState after ``start_step`` steps.
      batches: yields dicts of SFTBatch fields, starting at batch ``start_step``.
      num_steps: total steps of the stage.
      hooks: metric sink, progress, checkpointing.
      start_step: steps already done (a resumed stage).

    Returns:
      the final TrainState.
    """
    pending = []

    def flush():
        while pending:
            _emit(hooks, *pending.pop())

    for step in range(start_step, num_steps):
        state, metrics = sft_fn(state, steps_lib.SFTBatch(**next(batches)))
        flush()
        if _is_log_step(hooks, step, num_steps):
            pending.append((step, metrics))
        _after_step(hooks, step + 1, num_steps, state, flush)
    flush()
    return state


def _emit(hooks: LoopHooks, step: int, metrics) -> dict:
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    hooks.write(step + 1, host)
    hooks.progress(step + 1, host)
    return host


def rollout_reward(tok, examples, n_samples: int, ro) -> float:
    """Fraction of sampled responses the verifier accepts (host side; with several
    processes the rollout is gathered, a collective every process must call)."""
    tokens_BT, mask_BT = sharding.to_host((ro.tokens_BT, ro.mask_BT))
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
                num_steps: int, key, hooks: LoopHooks, *, tok, n_samples: int,
                start_step: int = 0, monitor: CollapseMonitor | None = None):
    """Runs the on-policy loop, logging methods.md section 9 metrics.

    Each phase is blocked on so the rollout / scoring / update split is real
    wall time.

    Args:
      fns: the jitted rollout / score / update functions.
      state: the student TrainState after ``start_step`` steps.
      teacher_params: frozen teacher parameters.
      batches: yields ``(examples, DistillBatch)``, starting at batch ``start_step``.
      num_steps: total steps of the run.
      key: the run's PRNG key (folded with the step inside the rollout).
      hooks: metric sink, progress, evaluation, checkpointing.
      tok: tokenizer (to verify sampled responses for the reward).
      n_samples: responses per prompt.
      start_step: steps already done (a resumed run).
      monitor: the collapse monitor to continue (a new one by default).

    Returns:
      ``(final state, monitor)``.
    """
    monitor = CollapseMonitor() if monitor is None else monitor
    for step in range(start_step, num_steps):
        examples, batch = next(batches)
        ro, t_roll = _timed(fns.rollout, state, batch, key)
        targets, t_score = _timed(fns.score, state, teacher_params, batch, ro)
        (state, metrics), t_upd = _timed(fns.update, state, ro, targets)
        if _is_log_step(hooks, step, num_steps):
            times = dict(time_rollout=t_roll, time_score=t_score, time_update=t_upd)
            _log_distill(hooks, monitor, step + 1, state, metrics, times,
                         rollout_reward(tok, examples, n_samples, ro))
        _after_step(hooks, step + 1, num_steps, state, lambda: None)
    return state, monitor


def _log_distill(hooks: LoopHooks, monitor: CollapseMonitor, done: int, state, metrics,
                 times: dict, reward: float) -> None:
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    host.update(times, tokens_per_sec=host["num_tokens"] / sum(times.values()), reward=reward)
    if hooks.evaluate is not None and hooks.eval_every and done % hooks.eval_every == 0:
        host.update(hooks.evaluate(done, state.params))
    for msg in monitor.update(done, host):
        hooks.warn(msg)
        host.setdefault("warnings", 0.0)
        host["warnings"] += 1
    hooks.write(done, host)
    hooks.progress(done, host)
