"""The distillation stage: one run (a method or a variant of one) from the shared student init."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import time

import jax
import numpy as np

from dopd_jax import sharding
from dopd_jax.data import encode
from dopd_jax.pipeline import evaluation, hf_models, memory_check
from dopd_jax.pipeline.context import Context
from dopd_jax.pipeline.run_models import RunModels
from dopd_jax.pipeline.sft_stage import Model, make_optimizer, stage_checkpointer
from dopd_jax.pipeline.specs import RunSpec
from dopd_jax.steps import DistillSpec, SamplerConfig, make_distill_fns, microbatch, outcome
from dopd_jax.trainer import checkpoints, early_stop, loop, params_io

SUMMARY_KEYS = (
    "loss",
    "student_entropy",
    "target_entropy",
    "kl_to_priv_teacher",
    "kl_to_teacher",
    "kl_to_priv_student",
    "A_bar",
    "qS_bar",
    "qT_bar",
    "frac_LH",
    "frac_LL",
    "frac_HT",
    "frac_HS",
    "reward",
    "response_len",
)
DISTILL_SEED, KEY_SEED = 300, 400  # offsets of the prompt stream's and the run key's seeds


def make_spec(run: RunSpec, tok, domains: tuple[str, ...] = ()) -> DistillSpec:
    """The static step description of a run."""
    sampler = SamplerConfig(
        max_new_tokens=run.max_new_tokens,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        temperature=run.temperature,
        top_k=run.top_k,
        top_p=run.top_p,
        n_samples=run.n_samples,
    )
    sampler.validate()
    return DistillSpec(
        method=run.method,
        config=run.config,
        sampler=sampler,
        log_passes=run.log_passes,
        chunk_size=run.chunk_size,
        diag_top_k=run.diag_top_k,
        rollout_batch=run.rollout_batch,
        domains=domains,
    )


def make_fns(graphdefs, opt, spec: DistillSpec, run: RunSpec, shardings):
    """The run's jitted step phases: the fused micro-batched step when the config asks
    for micro-batches or remat, else the three separate phases (one interface); their
    lean forms unless ``distill.lean_steps`` is off."""
    if run.num_microbatches > 1 or run.remat:
        fns = microbatch.make_microbatched_fns(
            graphdefs, opt, spec, run.num_microbatches, shardings, remat=run.remat
        )
    else:
        fns = make_distill_fns(graphdefs, opt, spec, shardings)
    return fns if run.lean_steps else dataclasses.replace(fns, score_lean=None, update_lean=None)


def _check_memory(ctx: Context, run: RunSpec, fns, state, teachers, batches, key):
    """Estimates per-device memory from the compiled steps when a limit is known
    (accelerators, or ``distill.memory_budget_gb``); refuses to start above it."""
    limit = memory_check.device_limit_bytes(run.memory_budget_gb)
    if limit is None:
        return batches
    first = next(batches)
    rewards = run.method.needs_reward(run.config)
    report = memory_check.phase_memory(fns, state, teachers, first[1], key, rewards)
    memory_check.check(report, limit, ctx.log)
    return itertools.chain([first], batches)


def _resume_config(ctx: Context, run: RunSpec, models: RunModels) -> dict:
    kept = {
        k: v
        for k, v in run.identity().items()
        if k not in ("checkpoint_every", "eval_every", "eval_n")
    }
    teacher, student = models.teacher, models.start
    # The frozen teachers are not saved with the run: they are named by their digests.
    out = {
        "distill": kept,
        "seed": ctx.spec.seed,
        "task": dataclasses.asdict(ctx.spec.task),
        "teacher_model": dataclasses.asdict(teacher.config),
        "teacher_params": params_io.tree_digest(teacher.params),
        "student_model": dataclasses.asdict(student.config),
        "student_init_params": params_io.tree_digest(student.params),
    }
    for d, m in models.domain_teachers.items():
        out[f"teacher_params/{d}"] = params_io.tree_digest(m.params)
    return out


def distill_batches(ctx: Context, stream, spec: DistillSpec | None = None):
    """Yields ``(examples, PromptBatch)`` of a (possibly resumed) prompt stream.

    ``examples`` is the whole batch; the batch holds global arrays to which each
    process feeds its own rows (``sharding.to_global_batch``)."""
    t = ctx.spec.task
    gold = spec is not None and "gold" in spec.response_mix
    for examples in stream:
        batch = encode.encode_prompts(
            examples,
            ctx.tok,
            form=t.priv_form,
            max_prompt_len=t.max_prompt_len,
            max_priv_len=t.max_priv_len,
            domains=(spec.domains or None) if spec is not None else None,
            max_response_len=spec.sampler.max_new_tokens if gold else None,
            wrong_hints=spec is not None and spec.method.needs_wrong_hint(spec.config),
        )
        yield examples, sharding.to_global_batch(batch, ctx.mesh)


def check_vocab(teacher_cfg, student_cfg) -> None:
    """Teacher and student must share a vocabulary (ids index the same tokens).

    Compared on the logits' vocabulary: checkpoints may pad their embeddings
    differently past the tokenizer's ids."""
    if teacher_cfg.logit_vocab_size != student_cfg.logit_vocab_size:
        raise ValueError(
            f"teacher vocabulary {teacher_cfg.logit_vocab_size} != student vocabulary "
            f"{student_cfg.logit_vocab_size}: distillation needs one shared vocabulary"
        )


def eval_sampler(ctx: Context, graphdef, k: int = 1):
    """The jitted sampler of this experiment's evaluations (greedy for k = 1)."""
    return evaluation.make_sampler(
        graphdef,
        max_new_tokens=ctx.spec.eval.max_new_tokens,
        eos_id=ctx.tok.eos_id,
        pad_id=ctx.tok.pad_id,
        k=k,
        temperature=ctx.spec.eval.temperature,
    )


def accuracy(ctx: Context, sampler, params, examples, privileged: bool, k: int = 1) -> dict:
    """Accuracy on ``examples`` with the experiment's prompt settings and verifier."""
    t = ctx.spec.task
    return evaluation.accuracy(
        sampler,
        params,
        examples,
        ctx.tok,
        ctx.task.verifier,
        privileged=privileged,
        form=t.priv_form,
        max_prompt_len=t.max_prompt_len,
        max_priv_len=t.max_priv_len,
        batch_size=ctx.spec.eval.batch_size,
        mesh=ctx.mesh,
        k=k,
        key=jax.random.key(ctx.spec.seed + 500),
    )


def full_eval(ctx: Context, model: Model, sampler=None) -> dict:
    """Greedy accuracy on every evaluation set without p, on the first one with p, and
    avg@k (``eval.avg_k``) on every set."""
    sampler = sampler or eval_sampler(ctx, model.graphdef)
    names = list(ctx.eval_sets)
    out = {}
    for name in names:
        out[f"acc_{name}"] = accuracy(ctx, sampler, model.params, ctx.eval_sets[name], False)
    first = out[f"acc_{names[0]}"]
    out = {k: v["acc"] for k, v in out.items()}
    out["acc_priv"] = accuracy(ctx, sampler, model.params, ctx.eval_sets[names[0]], True)["acc"]
    out.update(response_len=first["response_len"], truncated_frac=first["truncated_frac"])
    k = ctx.spec.eval.avg_k
    if k > 1:
        sampled = eval_sampler(ctx, model.graphdef, k)
        for name in names:
            out[f"avg{k}_{name}"] = accuracy(
                ctx, sampled, model.params, ctx.eval_sets[name], False, k
            )["acc"]
    return out


def _quick_eval(ctx: Context, run: RunSpec, spec: DistillSpec, sampler, step: int, state) -> dict:
    """In-run accuracy on the first ``eval_n`` problems of the first evaluation set."""
    subset = next(iter(ctx.eval_sets.values()))[: run.eval_n]
    out = {
        "eval_acc": accuracy(ctx, sampler, state.params, subset, False)["acc"],
        "eval_priv_acc": accuracy(ctx, sampler, state.params, subset, True)["acc"],
    }
    if spec.ref_update != "none":  # the privileged student the routing actually used
        out["eval_ref_priv_acc"] = accuracy(ctx, sampler, state.ref_params, subset, True)["acc"]
    return out


def _hooks(
    ctx: Context,
    run: RunSpec,
    spec: DistillSpec,
    sampler,
    writer,
    progress,
    history: list,
    monitor,
    save,
) -> loop.LoopHooks:
    def write(step, m):
        history.append(m)
        writer.write(f"distill/{run.name}", step, m)

    reward = functools.partial(
        evaluation.rollout_reward, ctx.tok, ctx.task.verifier, n_samples=run.n_samples
    )
    attach = None
    if run.method.needs_reward(run.config):

        def attach(examples, ro):
            rewards = evaluation.row_rewards(
                ctx.tok, ctx.task.verifier, examples, run.n_samples, ro
            )
            place = functools.partial(sharding.to_global_batch, mesh=ctx.mesh)
            eps = float(getattr(run.config, "adv_eps", 1e-6))
            return outcome.with_rewards(ro, rewards, run.n_samples, place, eps)

    return loop.LoopHooks(
        write=write,
        progress=lambda s, m: progress.advance(run.log_every, m),
        evaluate=functools.partial(_quick_eval, ctx, run, spec, sampler),
        eval_every=run.eval_every,
        log_every=run.log_every,
        reward=lambda examples, ro: reward(examples, ro=ro),
        monitor=monitor,
        warn=lambda msg: ctx.log(f"WARNING [{run.name}] {msg}"),
        checkpoint=save,
        checkpoint_every=run.checkpoint_every,
        attach_rewards=attach,
    )


def _monitor(run: RunSpec, saved: dict | None):
    if run.method.monitor is None:
        return None
    monitor = run.method.monitor()
    return monitor if saved is None else type(monitor).from_state(saved)


def _start_params(run: RunSpec, models: RunModels):
    """The run's starting parameters: the start student, or the method's ``prepare``."""
    if run.method.prepare is None:
        return models.start.params
    return run.method.prepare(run.config, models.start.params, models.teacher_params())


def _run_loop(
    ctx: Context,
    run: RunSpec,
    spec: DistillSpec,
    models: RunModels,
    sampler,
    writer,
    progress,
):
    """Resumes (or starts) and runs the distillation loop; returns (state, history, monitor)."""
    name, seed = f"distill/{run.name}", ctx.spec.seed
    with stage_checkpointer(ctx, name, _resume_config(ctx, run, models)) as ckpt:
        opt = make_optimizer(run.optim)
        stream = ctx.task.train_domains(run.batch_prompts, seed + DISTILL_SEED, run.domains)
        # New buffers (the update donates its state; student.params stays valid).
        keep_ref = spec.ref_update != "none"
        params = _start_params(run, models)
        init = sharding.init_state_sharded(params, opt, ctx.mesh, keep_ref=keep_ref)
        key = jax.random.key(seed + KEY_SEED)
        start, state, key, extra = checkpoints.resume(
            ckpt, name, init, key, stream, workdir=ctx.workdir, log=ctx.log
        )
        writer.resume(name, start)
        progress.skip(start)
        history, monitor = list(extra.get("history", [])), _monitor(run, extra.get("monitor"))
        stopper = early_stop.EarlyStop(**dict(run.early_stop), max_new_tokens=run.max_new_tokens)
        stopper.restore(extra.get("early_stop"))

        def save(step, st):
            monitor_state = None if monitor is None else monitor.state()
            extra = {"stream": stream.get_state(), "history": history, "monitor": monitor_state}
            ckpt.save(step, st, key, dict(extra, early_stop=stopper.state()))

        hooks = _hooks(ctx, run, spec, sampler, writer, progress, history, monitor, save)
        hooks.early_stop = stopper.update if stopper.enabled else None
        num_steps = start if stopper.stopped else run.steps  # a stopped run stays stopped
        teachers = models.teacher_params()
        shardings = sharding.step_shardings(ctx.mesh, opt, state, teachers)
        fns = make_fns(models.graphdefs(), opt, spec, run, shardings)
        batches = distill_batches(ctx, stream, spec)
        if start < num_steps:
            batches = _check_memory(ctx, run, fns, state, teachers, batches, key)
        with loop.sigterm_flag() as stop:
            hooks.stop_requested = stop
            state = loop.run_distill(
                fns, state, teachers, batches, num_steps, key, hooks, start_step=start
            )
    return state, history, monitor, stopper.stopped


def distill_stage(ctx: Context, run: RunSpec, models: RunModels, writer, progress):
    """Distils ``models.start`` with ``run``; checkpoints into ``ckpt/distill/<run>``.

    Returns:
      ``(result, params)``: the evaluation summary (accuracies, end-of-run metric
      means, warnings) and the final student parameters.
    """
    student = models.start
    for m in [models.teacher, *models.domain_teachers.values()]:
        check_vocab(m.config, student.config)
    spec = make_spec(run, ctx.tok, ctx.task.domains)
    progress.stage(f"distill/{run.name}")
    sampler = eval_sampler(ctx, student.graphdef)
    t0 = time.perf_counter()
    state, history, monitor, stopped = _run_loop(ctx, run, spec, models, sampler, writer, progress)
    if ctx.spec.student.hf_path is not None:
        _export(ctx, run, state.params, student)
    t1 = time.perf_counter()
    result = full_eval(ctx, dataclasses.replace(student, params=state.params), sampler)
    if spec.ref_update != "none":  # the frozen / EMA privileged student the routing used
        first = next(iter(ctx.eval_sets.values()))
        result["acc_ref_priv"] = accuracy(ctx, sampler, state.ref_params, first, True)["acc"]
    result["final"] = _summarize(history)
    result["warnings"] = [] if monitor is None else sorted(monitor.raised)
    if stopped is not None:  # the early-stop guardrail ended the run
        result["stopped"] = stopped
    result.update(method=run.method.name, label=run.label)
    # train: the step loop with its in-run evaluations and checkpoints; eval: the final one
    result["wall_s"] = {"train": t1 - t0, "eval": time.perf_counter() - t1}
    return result, state.params


def _export(ctx: Context, run: RunSpec, params, student: Model) -> None:
    """The distilled student as a Hugging Face checkpoint under ``WORKDIR/export/<run>``."""
    path = os.path.join(ctx.workdir, "export", run.name)
    original = hf_models.read_config(ctx.spec.student.hf_path, "student").param_dtype
    hf_models.export(path, params, student.config, original, hf_models.tokenizer_dir(ctx.spec))
    ctx.log(f"[{run.name}] exported the distilled student to {path} ({original})")


def _summarize(history: list[dict]) -> dict:
    """Means of the last quarter of logged records (a stable end-of-run value)."""
    if not history:  # a run that trains nothing (merge)
        return {}
    tail = history[-max(1, len(history) // 4) :]
    return {k: float(np.mean([h[k] for h in tail])) for k in SUMMARY_KEYS if k in tail[-1]}
