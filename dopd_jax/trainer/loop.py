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
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import optax
from jax.experimental import multihost_utils


def make_optimizer(
    lr: float,
    warmup_steps: int,
    total_steps: int,
    *,
    weight_decay: float,
    end_lr_fraction: float,
    clip_norm: float,
):
    """AdamW with linear warm-up, cosine decay to ``lr * end_lr_fraction`` and clipping.

    Args:
      lr: peak learning rate.
      warmup_steps: linear warm-up steps from 0 (0: the first update uses ``lr``).
      total_steps: steps of the whole schedule.
      weight_decay: AdamW decoupled weight decay.
      end_lr_fraction: the cosine schedule ends at this fraction of ``lr``.
      clip_norm: global-norm gradient clipping (0: off).
    """
    end = lr * end_lr_fraction
    decay_steps = max(total_steps, warmup_steps + 1)
    if warmup_steps > 0:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps, decay_steps, end_value=end
        )
    else:
        schedule = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_fraction)
    adamw = optax.adamw(schedule, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip_norm else adamw


@dataclasses.dataclass
class LoopHooks:
    """Side effects of a loop: metric sink, progress, periodic eval, checkpoints, stop flag."""

    write: Callable[[int, dict], None] = lambda step, m: None
    progress: Callable[[int, dict], None] = lambda step, m: None
    evaluate: Callable[[int, object], dict] | None = None  # (step, state) -> metrics
    eval_every: int = 0
    reward: Callable[[Any, Any], dict] | None = None  # (examples, rollout) -> metrics
    # (examples, rollout) -> rollout with reward_B / advantage_B, for methods that train
    # on the verifier's reward (GRPO, MOPD's outcome term); runs before scoring.
    attach_rewards: Callable[[Any, Any], Any] | None = None
    # (steps done, logged record) -> reason to stop the run now, or None (EarlyStop)
    early_stop: Callable[[int, dict], str | None] | None = None
    monitor: Any = None  # update(step, metrics) -> [warning messages]
    log_every: int = 10
    warn: Callable[[str], None] = print
    checkpoint: Callable[[int, Any], None] | None = None  # (steps done, state) -> None
    checkpoint_every: int = 0  # 0: only after the last step (and on SIGTERM)
    stop_requested: Callable[[int], bool] = lambda step: False  # (steps done) -> stop now


class Interrupted(SystemExit):
    """Raised after the step during which SIGTERM arrived (exit status 128 + 15)."""

    def __init__(self, step: int):
        super().__init__(128 + signal.SIGTERM)
        self.step = step


def _preemption_sync() -> bool:
    """True with several processes and JAX's preemption service (jax.distributed)."""
    return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


@contextlib.contextmanager
def sigterm_flag():
    """Within the block, SIGTERM only sets a flag; yields ``stop(steps_done) -> bool``.

    The loops poll it after each step (``LoopHooks.stop_requested``), so the
    current step finishes and a final checkpoint is written before exiting.
    Outside the main thread (where handlers cannot be installed) the flag
    never rises and SIGTERM keeps its previous behaviour.

    With several processes a preemption usually reaches one host: JAX's
    preemption service (installed by ``jax.distributed.initialize``) catches
    SIGTERM there and agrees with every process on one step, and the callable
    is ``multihost_utils.reached_preemption_sync_point(steps_done)``, polled by
    every process after every step, so all of them stop after the same step and
    write one consistent checkpoint. (Orbax's checkpoint manager polls the same
    sync point with the same step numbers when it saves.)
    """
    if _preemption_sync():
        yield multihost_utils.reached_preemption_sync_point
        return
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield lambda step: flag.is_set()
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield lambda step: flag.is_set()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _after_step(hooks: LoopHooks, done: int, num_steps: int, state, flush) -> None:
    """Checkpoints when due (or when asked to stop), then honours the stop request."""
    stop = hooks.stop_requested(done)
    every = hooks.checkpoint_every
    if hooks.checkpoint is not None and (
        stop or done == num_steps or (every and done % every == 0)
    ):
        flush()
        hooks.checkpoint(done, state)
    if stop:
        flush()
        hooks.warn(
            f"SIGTERM: stopped after step {done}"
            + (" and saved a checkpoint" if hooks.checkpoint else "")
            + "; rerun the same command to resume"
        )
        raise Interrupted(done)


def _is_eval_step(hooks: LoopHooks, done: int) -> bool:
    return bool(hooks.evaluate is not None and hooks.eval_every and done % hooks.eval_every == 0)


def _is_log_step(hooks: LoopHooks, step: int, num_steps: int) -> bool:
    """Logged: every ``log_every``-th step, the last one, and every evaluation step."""
    done = step + 1
    return done % hooks.log_every == 0 or done == num_steps or _is_eval_step(hooks, done)


def run_sft(
    sft_fn, state, batches: Iterator, num_steps: int, hooks: LoopHooks, *, start_step: int = 0
):
    """Runs SFT steps ``start_step .. num_steps - 1``; dispatches step n+1 before reading step n.

    Args:
      sft_fn: jitted ``(state, SFTBatch) -> (state, metrics)``.
      state: the TrainState after ``start_step`` steps.
      batches: yields ``SFTBatch``es, starting at batch ``start_step``.
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
        state, metrics = sft_fn(state, next(batches))
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


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def _distill_phases(fns, state, teachers, batch, key, timed: bool, rewards=None):
    """One step's three phases; on ``timed`` steps each is blocked on for the time split.

    ``rewards(ro) -> ro`` (the verifier, on the host) runs between the rollout and the
    scoring; its time counts as rollout time."""
    rewards = rewards or (lambda ro: ro)
    phase_fns = getattr(fns, "phase_fns", lambda log: (fns.score, fns.update))
    score, update = phase_fns(timed)  # lean (no diagnostics) where nothing is logged
    if not timed:
        ro = rewards(fns.rollout(state, teachers, batch, key))
        targets = score(state, teachers, batch, ro)
        state, metrics = update(state, ro, targets)
        return ro, state, metrics, {}
    jax.block_until_ready(state)  # earlier steps' queued work is not this step's time
    ro, t_roll = _timed(lambda *a: rewards(fns.rollout(*a)), state, teachers, batch, key)
    targets, t_score = _timed(score, state, teachers, batch, ro)
    (state, metrics), t_upd = _timed(update, state, ro, targets)
    return ro, state, metrics, dict(time_rollout=t_roll, time_score=t_score, time_update=t_upd)


def run_distill(
    fns,
    state,
    teachers,
    batches: Iterator,
    num_steps: int,
    key,
    hooks: LoopHooks,
    *,
    start_step: int = 0,
):
    """Runs the on-policy loop, logging methods.md section 9 metrics.

    Steps are dispatched without waiting; the host reads device values only on
    log steps (every ``log_every``-th, evaluation steps and the last), whose
    three phases are blocked on so the rollout / scoring / update split is
    real wall time. The other steps call the lean phases (``DistillFns.phase_fns``:
    no diagnostic passes or per-token diagnostics), whose update is the same.

    Args:
      fns: the jitted rollout / score / update functions (``steps.DistillFns``).
      state: the student TrainState after ``start_step`` steps.
      teachers: dict role -> frozen teacher parameters.
      batches: yields ``(examples, PromptBatch)``, starting at batch ``start_step``.
      num_steps: total steps of the run.
      key: the run's PRNG key (folded with the step inside the rollout).
      hooks: metric sink, progress, evaluation, reward, monitor, checkpointing.
      start_step: steps already done (a resumed run).

    Returns:
      the final state.
    """
    for step in range(start_step, num_steps):
        examples, batch = next(batches)
        log = _is_log_step(hooks, step, num_steps)
        attach = hooks.attach_rewards
        rewards = None if attach is None else functools.partial(attach, examples)
        ro, state, metrics, times = _distill_phases(fns, state, teachers, batch, key, log, rewards)
        if log:
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            host.update(times, tokens_per_sec=host["num_tokens"] / sum(times.values()))
            if hooks.reward is not None:
                host.update(hooks.reward(examples, ro))
            _log_distill(hooks, step + 1, state, host)
            reason = None if hooks.early_stop is None else hooks.early_stop(step + 1, host)
            if reason is not None:
                if hooks.checkpoint is not None:
                    hooks.checkpoint(step + 1, state)
                hooks.warn(f"early stop after step {step + 1}: {reason}")
                return state
        _after_step(hooks, step + 1, num_steps, state, lambda: None)
    return state


def _log_distill(hooks: LoopHooks, done: int, state, host: dict) -> None:
    if _is_eval_step(hooks, done):
        host.update(hooks.evaluate(done, state))
    for msg in hooks.monitor.update(done, host) if hooks.monitor is not None else ():
        hooks.warn(msg)
        host.setdefault("warnings", 0.0)
        host["warnings"] += 1
    hooks.write(done, host)
    hooks.progress(done, host)
