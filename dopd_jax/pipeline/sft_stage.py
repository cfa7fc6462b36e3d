"""Models as data: each of teacher and student is built and SFT-trained, or restored.

``scratch``: a transformer of the configured shape, SFT-trained on the task's
gold responses (with p shown on part of the examples), resumable from
``WORKDIR/ckpt/<name>``. ``workdir:PATH``: the finished stage ``<name>`` of a
previous experiment under PATH, its shape read from PATH/config.json.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any

import jax
import numpy as np
from flax import nnx

from dopd_jax import sharding
from dopd_jax.data import encode
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.pipeline import hf_models
from dopd_jax.pipeline.context import Context
from dopd_jax.pipeline.specs import ModelSpec
from dopd_jax.steps import make_sft_fn
from dopd_jax.trainer import checkpoints, loop, params_io


@dataclasses.dataclass(frozen=True)
class Model:
    """A split NNX model: static graph plus parameter state."""

    graphdef: Any
    params: Any
    config: ModelConfig


def init_model(ctx: Context, arch: dict, seed: int) -> Model:
    """Initialises a transformer whose vocabulary is the tokenizer's, in its shardings."""
    mc = ModelConfig(vocab_size=ctx.tok.vocab_size, **arch)
    graphdef, params = sharding.init_sharded(lambda: Transformer(mc, rngs=nnx.Rngs(seed)), ctx.mesh)
    return Model(graphdef, params, mc)


def make_optimizer(optim):
    """The optax transformation of an ``OptimSpec``."""
    return loop.make_optimizer(
        optim.lr,
        optim.warmup_steps,
        optim.total_steps,
        weight_decay=optim.weight_decay,
        end_lr_fraction=optim.end_lr_fraction,
        clip_norm=optim.clip_norm,
    )


def stage_checkpointer(ctx: Context, stage: str, config: dict):
    """The checkpointer of ``stage`` under ``WORKDIR/ckpt/<stage>`` (checks ``config``)."""
    return checkpoints.StageCheckpointer(
        os.path.join(ctx.workdir, "ckpt", stage), config, keep=ctx.spec.checkpoint_keep, log=ctx.log
    )


def load_into(ctx: Context, model: Model, path: str) -> Model:
    params = params_io.load_params(path, model.params)  # in model.params' shardings
    if jax.process_count() == 1:
        params = sharding.shard_params(params, ctx.mesh)
    return dataclasses.replace(model, params=params)


def _restored(ctx: Context, m: ModelSpec) -> Model:
    """The finished stage ``m.name`` of the workdir named by ``m.source``."""
    root = m.source[len("workdir:") :]
    cfg_path = os.path.join(root, "config.json")
    if not os.path.exists(cfg_path) or not params_io.has_params(os.path.join(root, m.name)):
        raise ValueError(
            f"model source {m.source!r}: {root} is not a finished experiment "
            f"workdir (needs config.json and {m.name}/)"
        )
    with open(cfg_path) as f:
        saved = json.load(f)
    key = "teacher" if m.name == "teacher" else "student"
    model = init_model(ctx, saved[key]["model"], m.seed)
    return load_into(ctx, model, os.path.join(root, m.name))


def _sft_batches(ctx: Context, m: ModelSpec, stream, start: int):
    """SFT batches of ``stream`` from step ``start``; the p-dropout draws of batch i use
    the seed (seed, i), so a resumed stream reproduces them. Every process builds the
    whole batch and feeds its own rows (``sharding.to_global_batch``)."""
    for index in itertools.count(start):
        batch = encode.encode_sft(
            next(stream),
            ctx.tok,
            p_dropout=m.p_dropout,
            rng=np.random.default_rng([m.seed, index]),
            max_len=m.max_len,
            form=ctx.spec.task.sft_forms,
        )
        yield sharding.to_global_batch(batch, ctx.mesh)


def _resume_config(ctx: Context, m: ModelSpec) -> dict:
    kept = {
        k: v for k, v in dataclasses.asdict(m).items() if k not in ("checkpoint_every", "log_every")
    }
    return {
        m.name: kept,
        "vocab_size": ctx.tok.vocab_size,
        "task": dataclasses.asdict(ctx.spec.task),
    }


def _train(ctx: Context, m: ModelSpec, writer, progress) -> Model:
    run = f"{m.name}_sft"
    log_every = m.log_every
    with stage_checkpointer(ctx, m.name, _resume_config(ctx, m)) as ckpt:
        model = init_model(ctx, m.arch_dict(), m.seed)
        opt = make_optimizer(m.optim)
        stream = ctx.task.train(m.batch_size, m.seed)
        start, state, _, _ = checkpoints.resume(
            ckpt,
            run,
            sharding.init_state_sharded(model.params, opt, ctx.mesh, keep_ref=False),
            None,
            stream,
            workdir=ctx.workdir,
            log=ctx.log,
        )
        writer.resume(run, start)
        progress.skip(start)
        with loop.sigterm_flag() as stop:
            hooks = loop.LoopHooks(
                write=lambda s, mt: writer.write(run, s, mt),
                progress=lambda s, mt: progress.advance(log_every, mt),
                log_every=log_every,
                warn=lambda msg: ctx.log(f"WARNING [{m.name}] {msg}"),
                checkpoint=lambda s, st: ckpt.save(s, st, None, {"stream": stream.get_state()}),
                checkpoint_every=m.checkpoint_every,
                stop_requested=stop,
            )
            sft_fn = make_sft_fn(model.graphdef, opt, sharding.step_shardings(ctx.mesh, opt, state))
            state = loop.run_sft(
                sft_fn, state, _sft_batches(ctx, m, stream, start), m.steps, hooks, start_step=start
            )
    return dataclasses.replace(model, params=state.params)


def _from_hf(ctx: Context, m: ModelSpec) -> Model:
    loaded = hf_models.load_model(m, ctx.tok, ctx.mesh)
    ctx.log(
        f"{m.name}: {m.hf_path} ({loaded.config.n_layers} layers, d_model "
        f"{loaded.config.d_model}, {loaded.config.vocab_size} embedding rows, logits over "
        f"{loaded.config.logit_vocab_size} ids; params {loaded.config.param_dtype}, "
        f"compute {loaded.config.dtype})"
    )
    return Model(loaded.graphdef, loaded.params, loaded.config)


def will_train(ctx: Context, m: ModelSpec) -> bool:
    """True when ``model_stage`` SFT-trains ``m`` (no checkpoint, source or saved params)."""
    restorable = m.hf_path is not None or m.source.startswith("workdir:")
    return not restorable and not params_io.has_params(os.path.join(ctx.workdir, m.name))


def model_stage(ctx: Context, m: ModelSpec, writer, progress) -> Model:
    """The model of ``m``: loaded from a checkpoint, reloaded when its stage finished,
    restored, or SFT-trained."""
    path = os.path.join(ctx.workdir, m.name)
    if m.hf_path is not None:
        progress.skip(m.steps)
        return _from_hf(ctx, m)
    if m.source.startswith("workdir:"):
        progress.skip(m.steps)
        return _restored(ctx, m)
    if params_io.has_params(path):
        progress.skip(m.steps)
        return load_into(ctx, init_model(ctx, m.arch_dict(), m.seed), path)
    progress.stage(m.name)
    model = _train(ctx, m, writer, progress)
    params_io.save_params(path, model.params)
    return model
