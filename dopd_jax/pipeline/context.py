"""The stages of an experiment: context (tokenizer, eval sets, mesh), SFT stages, evaluation.

The distillation stage lives in ``dopd_jax.distill_stage``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from dopd_jax import checkpoint, evaluate
from dopd_jax import sharding
from dopd_jax import steps as steps_lib, train, train_checkpoint
from dopd_jax.data import encode, pipeline
from dopd_jax.data import tasks
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.tokenizer import Tokenizer, corpus_for_tokenizer, train_tokenizer

SFT_FORMS = ("hints", "exec_hints", "answer")

@dataclasses.dataclass(frozen=True)
class Model:
    """A split NNX model: static graph plus parameter state."""

    graphdef: Any
    params: Any
    config: ModelConfig


@dataclasses.dataclass
class Context:
    """What every stage needs: config, workdir, tokenizer, evaluation sets."""

    cfg: Any
    workdir: str
    tok: Tokenizer
    test_set: list
    hard_set: list
    log: Callable[[str], None]
    mesh: Any = None  # jax.sharding.Mesh of every jitted step (config.mesh)


class Progress:
    """One progress bar over all steps of the experiment."""

    def __init__(self, total: int):
        self._bar = tqdm(total=total, unit="step", dynamic_ncols=True, mininterval=1.0,
                         disable=jax.process_index() != 0)  # one bar per experiment

    @classmethod
    def for_config(cls, cfg) -> "Progress":
        return cls(cfg.teacher.steps + cfg.student.steps
                   + len(cfg.distill.methods) * cfg.distill.steps)

    def stage(self, name: str) -> None:
        self._bar.set_description(name)

    def advance(self, n: int, metrics: dict | None = None) -> None:
        self._bar.update(n)
        if metrics:
            keys = ("loss", "reward", "eval_acc", "frac_HS")
            self._bar.set_postfix({k: f"{metrics[k]:.3g}" for k in keys if k in metrics})

    def skip(self, n: int) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def build_context(cfg, workdir: str, log) -> Context:
    """Loads or trains the tokenizer and builds the fixed evaluation sets."""
    path = os.path.join(workdir, "tokenizer.model")
    exists = os.path.exists(path)
    if jax.process_count() > 1:  # every process decides before process 0 writes
        multihost_utils.sync_global_devices("dopd_jax.tokenizer_checked")
    if exists:
        tok = Tokenizer.load(path)
    else:  # deterministic: every process trains the same tokenizer, process 0 saves it
        corpus = corpus_for_tokenizer(sorted(tasks.DOMAINS), cfg.tokenizer.corpus_size, cfg.seed)
        tok = train_tokenizer(corpus, vocab_size=cfg.tokenizer.vocab_size)
        if jax.process_index() == 0:
            tok.save(path)
    kw = task_kwargs(cfg)
    test = pipeline.eval_set(cfg.task.domain, "test", cfg.task.n_test, cfg.seed + 1, **kw)
    hard = pipeline.eval_set(cfg.task.domain, "hard", cfg.task.n_hard, cfg.seed + 2, **kw)
    ctx = Context(cfg, workdir, tok, test, hard, log, sharding.make_mesh(dict(cfg.mesh)))
    check_lengths(ctx)
    return ctx


def check_lengths(ctx: Context) -> None:
    """Encodes the evaluation sets and a training batch up front, so a prompt or
    sequence longer than the configured maximum fails before anything compiles
    (the error names the row and the lengths)."""
    t = ctx.cfg.task
    for name, examples in (("test", ctx.test_set), ("hard", ctx.hard_set),
                           ("train", next(iter(distill_examples(ctx, ctx.cfg.seed))))):
        try:
            encode.encode_prompts(examples, ctx.tok, form=t.priv_form,
                                  max_prompt_len=t.max_prompt_len, max_priv_len=t.max_priv_len)
            for stage in ("teacher", "student"):
                encode.encode_sft(examples, ctx.tok, form=SFT_FORMS, p_dropout=0.0,
                                  rng=np.random.default_rng(0), max_len=ctx.cfg[stage].max_len)
        except ValueError as e:
            raise ValueError(f"{name} split does not fit the configured lengths "
                             f"(task.max_prompt_len / task.max_priv_len / "
                             f"teacher.max_len / student.max_len): {e}") from e


def task_kwargs(cfg) -> dict:
    kw = {"misleading_fraction": cfg.task.misleading_fraction}
    if cfg.task.difficulty:
        kw["difficulty"] = cfg.task.difficulty
    return kw


def init_model(ctx: Context, model_cfg, seed: int) -> Model:
    """Initialises a transformer whose vocabulary is the tokenizer's."""
    mc = ModelConfig(vocab_size=ctx.tok.vocab_size, **model_cfg.to_dict())
    graphdef, params = sharding.init_sharded(lambda: Transformer(mc, rngs=nnx.Rngs(seed)),
                                             ctx.mesh)
    return Model(graphdef, params, mc)


CHECKPOINT_EVERY = 100  # steps between checkpoints when a stage config has no checkpoint_every
# Fields that may change between a checkpoint and its resume (they change no state).
RESUME_IGNORED = ("checkpoint_every", "eval_every", "eval_n", "methods", "variants")


def stage_checkpointer(ctx: Context, stage: str, config: dict):
    """The checkpointer of ``stage`` under ``WORKDIR/ckpt/<stage>`` (checks ``config``)."""
    return train_checkpoint.StageCheckpointer(
        os.path.join(ctx.workdir, "ckpt", stage), config,
        keep=ctx.cfg.get("checkpoint_keep", 2), log=ctx.log)


def _sft_resume_config(ctx: Context, name: str, stage_cfg, seed: int) -> dict:
    field = next((k for k in ("teacher", "student") if ctx.cfg[k] is stage_cfg), name)
    kept = {k: v for k, v in stage_cfg.to_dict().items() if k not in RESUME_IGNORED}
    return {field: kept, "vocab_size": ctx.tok.vocab_size, "seed": seed,
            "task": ctx.cfg.task.to_dict()}


def _sft_batches(ctx: Context, stage_cfg, seed: int, stream):
    """SFT batches of ``stream``; the p-dropout draws of batch i use the seed (seed, i),
    so a resumed stream reproduces them. Every process builds the whole batch and
    feeds its own rows (``sharding.to_global_batch``)."""
    while True:
        index = stream.get_state()["next_batch"]
        sft = encode.encode_sft(next(stream), ctx.tok, p_dropout=stage_cfg.p_dropout,
                                rng=np.random.default_rng([seed, index]),
                                max_len=stage_cfg.max_len, form=SFT_FORMS)
        yield sharding.to_global_batch({"inputs_BL": sft.inputs_BL, "targets_BL": sft.targets_BL,
                                        "loss_mask_BL": sft.loss_mask_BL}, ctx.mesh)


def _sft_stage(ctx: Context, name: str, stage_cfg, seed: int, writer, progress) -> Model:
    """Trains (resuming from ``ckpt/<name>``) or reloads the SFT model ``name``."""
    path = os.path.join(ctx.workdir, name)
    if checkpoint.has_params(path):
        model = init_model(ctx, stage_cfg.model, seed)
        progress.skip(stage_cfg.steps)
        params = checkpoint.load_params(path, model.params)  # in model.params' shardings
        if jax.process_count() == 1:
            params = sharding.shard_params(params, ctx.mesh)
        return dataclasses.replace(model, params=params)
    progress.stage(name)
    with stage_checkpointer(ctx, name, _sft_resume_config(ctx, name, stage_cfg, seed)) as ckpt:
        model = init_model(ctx, stage_cfg.model, seed)
        opt = train.make_optimizer(stage_cfg.lr, stage_cfg.warmup_steps, stage_cfg.steps)
        stream = pipeline.TrainStream([ctx.cfg.task.domain], stage_cfg.batch_size, seed,
                                      **task_kwargs(ctx.cfg))
        start, state, _, _ = train_checkpoint.resume(
            ckpt, f"{name}_sft",
            sharding.init_state_sharded(model.params, opt, ctx.mesh, keep_ref=False), None,
            stream, workdir=ctx.workdir, log=ctx.log)
        writer.resume(f"{name}_sft", start)
        progress.skip(start)
        with train.sigterm_flag() as stop:
            hooks = train.LoopHooks(
                write=lambda s, m: writer.write(f"{name}_sft", s, m),
                progress=lambda s, m: progress.advance(ctx.cfg.distill.log_every, m),
                log_every=ctx.cfg.distill.log_every,
                warn=lambda msg: ctx.log(f"WARNING [{name}] {msg}"),
                checkpoint=lambda s, st: ckpt.save(s, st, None, {"stream": stream.get_state()}),
                checkpoint_every=stage_cfg.get("checkpoint_every", CHECKPOINT_EVERY),
                stop_requested=stop)
            sft_fn = steps_lib.make_sft_fn(model.graphdef, opt,
                                           sharding.step_shardings(ctx.mesh, opt, state))
            state = train.run_sft(sft_fn, state,
                                  _sft_batches(ctx, stage_cfg, seed, stream), stage_cfg.steps,
                                  hooks, start_step=start)
    checkpoint.save_params(path, state.params)
    return dataclasses.replace(model, params=state.params)


def teacher_stage(ctx, writer, progress) -> Model:
    """Trains (or reloads) the privileged teacher."""
    return _sft_stage(ctx, "teacher", ctx.cfg.teacher, ctx.cfg.seed + 100, writer, progress)


def student_stage(ctx, writer, progress) -> Model:
    """Warms up (or reloads) the student initialisation shared by every method."""
    return _sft_stage(ctx, "student_init", ctx.cfg.student, ctx.cfg.seed + 200, writer, progress)


def greedy_sampler(ctx: Context, graphdef):
    """The jitted greedy sampler of this experiment's evaluations."""
    return evaluate.make_greedy_sampler(graphdef, max_new_tokens=ctx.cfg.distill.max_new_tokens,
                                        eos_id=ctx.tok.eos_id, pad_id=ctx.tok.pad_id)


def accuracy(ctx, sampler, params, examples, privileged: bool) -> dict:
    """Greedy accuracy on ``examples`` with the experiment's prompt settings."""
    t = ctx.cfg.task
    return evaluate.accuracy(sampler, params, examples, ctx.tok, privileged=privileged,
                             form=t.priv_form, max_prompt_len=t.max_prompt_len,
                             max_priv_len=t.max_priv_len, batch_size=ctx.cfg.eval.batch_size,
                             mesh=ctx.mesh)


def full_eval(ctx: Context, model: Model, sampler=None) -> dict:
    """Test and hard-slice accuracy without p, and privileged accuracy on test."""
    sampler = sampler or greedy_sampler(ctx, model.graphdef)
    test = accuracy(ctx, sampler, model.params, ctx.test_set, False)
    hard = accuracy(ctx, sampler, model.params, ctx.hard_set, False)
    priv = accuracy(ctx, sampler, model.params, ctx.test_set, True)
    return {"acc_test": test["acc"], "acc_hard": hard["acc"], "acc_priv": priv["acc"],
            "response_len": test["response_len"], "truncated_frac": test["truncated_frac"]}


def distill_examples(ctx: Context, seed: int):
    """The stream of distillation prompts (lists of examples), resumable by index."""
    c = ctx.cfg
    return pipeline.TrainStream([c.task.domain], c.distill.batch_prompts, seed,
                                **task_kwargs(c))
