"""The distillation stage: one run (a method or a variant) from the shared student init."""
from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from dopd_jax import checkpoint, config as config_lib, evaluate, rollout as rollout_lib
from dopd_jax import sharding
from dopd_jax import steps as steps_lib, train, train_checkpoint
from dopd_jax.methods import get_method
from dopd_jax.models import ModelConfig
from dopd_jax.monitor import CollapseMonitor
from dopd_jax.stages import (CHECKPOINT_EVERY, RESUME_IGNORED, Context, Model, accuracy,
                             distill_examples, full_eval, greedy_sampler, stage_checkpointer)

SUMMARY_KEYS = ("loss", "student_entropy", "target_entropy", "kl_to_priv_teacher",
                "kl_to_teacher", "kl_to_priv_student", "A_bar", "qS_bar", "qT_bar",
                "frac_LH", "frac_LL", "frac_HT", "frac_HS", "reward", "response_len")


def distill_batches(ctx: Context, seed: int):
    """Yields ``(examples, DistillBatch)`` of the distillation prompt stream."""
    return _distill_batches_of(ctx, distill_examples(ctx, seed))


def make_spec(d, method: str, tok) -> steps_lib.DistillSpec:
    """The static step description of ``method`` under the distill config ``d``."""
    sampler = rollout_lib.SamplerConfig(
        max_new_tokens=d.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
        temperature=d.temperature, top_k=d.top_k, top_p=d.top_p, n_samples=d.n_samples)
    sampler.validate()
    return steps_lib.DistillSpec(
        method=get_method(method), loss=config_lib.loss_config(d), sampler=sampler,
        priv_student=config_lib.priv_student_mode(d, method), ema_decay=d.ema_decay,
        log_passes=tuple(d.log_passes))


def _distill_resume_config(c, run: str, method: str, d, teacher: Model, student: Model) -> dict:
    kept = {k: v for k, v in config_lib.to_json_dict(d).items() if k not in RESUME_IGNORED}
    # The frozen teacher is not saved with the run: it is named by its parameters' digest.
    return {"run": run, "method": method, "distill": kept, "seed": c.seed,
            "task": c.task.to_dict(), "teacher_model": dataclasses.asdict(teacher.config),
            "teacher_params": checkpoint.tree_digest(teacher.params),
            "student_model": dataclasses.asdict(student.config),
            "student_init_params": checkpoint.tree_digest(student.params)}


def _distill_batches_of(ctx: Context, stream):
    """Yields ``(examples, DistillBatch)`` of a (possibly resumed) prompt stream.

    ``examples`` is the whole batch; the DistillBatch holds global arrays to which
    each process feeds its own rows (``sharding.to_global_batch``)."""
    t = ctx.cfg.task
    for examples in stream:
        arr = evaluate.prompt_arrays(examples, ctx.tok, form=t.priv_form,
                                     max_prompt_len=t.max_prompt_len,
                                     max_priv_len=t.max_priv_len)
        yield examples, sharding.to_global_batch(
            steps_lib.DistillBatch(arr.prompt_BP, arr.prompt_mask_BP, arr.priv_BQ,
                                   arr.priv_mask_BQ), ctx.mesh)


def _monitor_from(saved: dict | None) -> CollapseMonitor:
    if saved is None:
        return CollapseMonitor()
    return CollapseMonitor(history=list(saved["history"]), raised=set(saved["raised"]))


def _distill_hooks(ctx: Context, run: str, d, sampler, writer, progress, history: list,
                   save) -> train.LoopHooks:
    def write(step, m):
        history.append(m)
        writer.write(f"distill/{run}", step, m)

    return train.LoopHooks(
        write=write, progress=lambda s, m: progress.advance(d.log_every, m),
        evaluate=functools.partial(_quick_eval, ctx, sampler), eval_every=d.eval_every,
        log_every=d.log_every, warn=lambda msg: ctx.log(f"WARNING [{run}] {msg}"),
        checkpoint=save, checkpoint_every=d.get("checkpoint_every", CHECKPOINT_EVERY))


def distill_stage(ctx: Context, run: str, teacher: Model, student: Model, writer,
                  progress) -> dict:
    """Distils the student init with run ``run`` (a method or a variant of one).

    Checkpoints into ``ckpt/distill/<run>`` and resumes from its latest step.

    Returns:
      the evaluation summary: accuracies, end-of-run metric means, warnings.
    """
    c = ctx.cfg
    method, d = config_lib.resolve_run(c, run)
    check_vocab(teacher.config, student.config)
    spec = make_spec(d, method, ctx.tok)
    progress.stage(f"distill/{run}")
    resume_cfg = _distill_resume_config(c, run, method, d, teacher, student)
    with stage_checkpointer(ctx, f"distill/{run}", resume_cfg) as ckpt:
        opt = train.make_optimizer(d.lr, d.warmup_steps, d.steps)
        stream = distill_examples(ctx, c.seed + 300)
        # New buffers (the update donates its state; student.params stays valid).
        init = sharding.init_state_sharded(student.params, opt, ctx.mesh,
                                           keep_ref=spec.priv_student != "live")
        start, state, key, extra = train_checkpoint.resume(
            ckpt, f"distill/{run}", init,
            jax.random.key(c.seed + 400), stream, workdir=ctx.workdir, log=ctx.log)
        writer.resume(f"distill/{run}", start)
        progress.skip(start)
        history, monitor = list(extra.get("history", [])), _monitor_from(extra.get("monitor"))
        sampler = greedy_sampler(ctx, student.graphdef)

        def save(step, st):
            ckpt.save(step, st, key, {"stream": stream.get_state(), "history": history,
                                      "monitor": {"history": monitor.history,
                                                  "raised": sorted(monitor.raised)}})

        hooks = _distill_hooks(ctx, run, d, sampler, writer, progress, history, save)
        fns = steps_lib.make_distill_fns(
            student.graphdef, teacher.graphdef, opt, spec,
            sharding.step_shardings(ctx.mesh, opt, state, teacher.params))
        with train.sigterm_flag() as stop:
            hooks.stop_requested = stop
            state, monitor = train.run_distill(
                fns, state, teacher.params, _distill_batches_of(ctx, stream), d.steps, key,
                hooks, tok=ctx.tok, n_samples=d.n_samples, start_step=start, monitor=monitor)
    result = full_eval(ctx, dataclasses.replace(student, params=state.params), sampler)
    result["final"] = _summarize(history)
    result["warnings"] = sorted(monitor.raised)
    result["method"] = method
    return result


def check_vocab(teacher_cfg: ModelConfig, student_cfg: ModelConfig) -> None:
    """Teacher and student must share a vocabulary (ids index the same tokens)."""
    if teacher_cfg.vocab_size != student_cfg.vocab_size:
        raise ValueError(f"teacher vocab_size {teacher_cfg.vocab_size} != student vocab_size "
                         f"{student_cfg.vocab_size}: distillation needs one shared vocabulary")


def _quick_eval(ctx: Context, sampler, step: int, params) -> dict:
    subset = ctx.test_set[:ctx.cfg.distill.eval_n]
    plain = accuracy(ctx, sampler, params, subset, False)
    priv = accuracy(ctx, sampler, params, subset, True)
    return {"eval_acc": plain["acc"], "eval_priv_acc": priv["acc"]}


def _summarize(history: list[dict]) -> dict:
    """Means of the last quarter of logged records (a stable end-of-run value)."""
    tail = history[-max(1, len(history) // 4):]
    return {k: float(np.mean([h[k] for h in tail])) for k in SUMMARY_KEYS if k in tail[-1]}
