"""Experiment configuration: the base ConfigDict and its validation.

Experiment modules (``experiments/*.py``) call ``base_config()`` and override
a few fields; ``validate`` runs before anything is compiled and names the
offending key. Configs are locked, so a misspelt override
(``--config.distill.stpes=3``) fails instead of being silently added.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os

import ml_collections

from dopd_jax.methods import METHODS, LossConfig

PRIV_STUDENT_MODES = ("live", "frozen", "ema")


def model_config(d_model, n_layers, n_heads, n_kv_heads, d_ff, *, qk_norm=True):
    """A ConfigDict of ``ModelConfig`` fields (vocab_size comes from the tokenizer)."""
    return ml_collections.ConfigDict(dict(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
        head_dim=d_model // n_heads, d_ff=d_ff, rope_theta=10000.0, qk_norm=qk_norm,
        tie_embeddings=True, param_dtype="float32", dtype="float32"))


def base_config() -> ml_collections.ConfigDict:
    """Defaults of the privilege-illusion experiment family (CPU scale)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Device mesh of every step (sharding_rules: batch over data x fsdp, weights over
    # fsdp x tensor); -1 = all remaining devices. One CPU device gives a 1x1x1 mesh.
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    # Multi-process runs (one process per host, or several on one machine): with
    # num_processes > 1, dopd_jax.run calls jax.distributed.initialize with these.
    c.distributed = dict(coordinator_address="", num_processes=1, process_id=0)
    c.checkpoint_keep = 2  # training-state checkpoints kept per stage (ckpt/<stage>)
    c.task = dict(domain="arith", difficulty="", misleading_fraction=0.2,
                  priv_form="exec_hints", max_prompt_len=16, max_priv_len=32,
                  n_test=1000, n_hard=1000)
    c.tokenizer = dict(vocab_size=64, corpus_size=3000)
    c.teacher = dict(model=model_config(96, 3, 4, 2, 256), steps=1200, batch_size=64,
                     lr=3e-3, warmup_steps=50, p_dropout=0.5, max_len=64,
                     checkpoint_every=200)
    # 800 warm-up steps leave the student at ~10% test accuracy (~34% given p):
    # weak enough to need the teacher, strong enough that p is usable.
    c.student = dict(model=model_config(64, 2, 4, 2, 192), steps=800, batch_size=64,
                     lr=3e-3, warmup_steps=30, p_dropout=0.5, max_len=64,
                     checkpoint_every=200)
    loss = dataclasses.asdict(LossConfig())
    loss.update(top_k=16, gap_threshold=-1.0, is_clip=(), adv_clip=0.0, chunk_size=0)
    c.distill = dict(
        methods=("opd", "privt", "opsd", "dopd", "dopd_hs_teacher", "dopd_frozen"),
        steps=300, batch_prompts=16,
        n_samples=4, lr=1e-3, warmup_steps=10, max_new_tokens=32, temperature=1.0,
        top_k=0, top_p=1.0, loss=loss, priv_student="", opsd_teacher="frozen",
        ema_decay=0.99, log_every=10, eval_every=100, eval_n=200, checkpoint_every=100,
        log_passes=("teacher", "priv_teacher"),
        # Named variants usable in ``methods``: a method plus distill overrides.
        variants=dict(
            dopd_hs_teacher=dict(method="dopd", loss=dict(hs_target="teacher")),
            dopd_frozen=dict(method="dopd", priv_student="frozen")))
    c.eval = dict(batch_size=256)
    c.lock()
    return c


def shrink_to_smoke(c: ml_collections.ConfigDict) -> None:
    """Shrinks a config of this family in place to run in about a minute on one core."""
    c.teacher.model = model_config(32, 1, 2, 1, 64)
    c.student.model = model_config(32, 1, 2, 1, 64)
    c.teacher.steps, c.student.steps, c.distill.steps = 20, 10, 4
    c.distill.log_every, c.distill.eval_every, c.distill.eval_n = 2, 4, 16
    c.distill.batch_prompts, c.distill.n_samples, c.distill.max_new_tokens = 8, 2, 24
    c.task.n_test, c.task.n_hard = 32, 32
    c.tokenizer.corpus_size = 500
    c.eval.batch_size = 32


def to_json_dict(c: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON types (tuples become lists)."""
    return json.loads(json.dumps(c.to_dict()))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The full config a workdir was run with (``workdir/config.json``)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: {workdir} is not an experiment workdir")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def loss_config(d: ml_collections.ConfigDict) -> LossConfig:
    """Converts a distill config's ``loss`` block into the static ``LossConfig``."""
    kw = d.loss.to_dict()
    kw["gap_threshold"] = None if kw["gap_threshold"] < 0 else float(kw["gap_threshold"])
    kw["is_clip"] = tuple(kw["is_clip"]) or None
    kw["adv_clip"] = kw["adv_clip"] or None
    kw["chunk_size"] = kw["chunk_size"] or None
    return LossConfig(**kw)


def priv_student_mode(d: ml_collections.ConfigDict, method: str) -> str:
    """Where the privileged student's parameters come from for ``method``."""
    if method == "opsd":
        return "frozen" if d.opsd_teacher == "frozen" else "live"
    return d.priv_student or "live"


def resolve_run(c: ml_collections.ConfigDict, name: str):
    """A run of ``distill.methods``: a method name, or a key of ``distill.variants``.

    Returns:
      ``(method_name, distill_config)`` where the distill config carries the
      variant's overrides (a copy; ``c`` is not modified).

    Raises:
      ValueError: unknown run name, or a variant overriding an unknown field.
    """
    d = copy.deepcopy(c.distill)
    if name in METHODS:
        return name, d
    if name not in d.variants:
        raise ValueError(f"config.distill.methods: unknown method {name!r}; valid methods: "
                         f"{sorted(METHODS)}, variants: {sorted(d.variants)}")
    overrides = d.variants[name].to_dict()
    method = overrides.pop("method", None)
    if method not in METHODS:
        raise ValueError(f"config.distill.variants.{name}.method: unknown method {method!r}; "
                         f"valid: {sorted(METHODS)}")
    _apply(d, overrides, f"distill.variants.{name}")
    return method, d


def _apply(target: ml_collections.ConfigDict, overrides: dict, where: str) -> None:
    for key, value in overrides.items():
        if key not in target:
            raise ValueError(f"config.{where}: {key!r} is not a distill field")
        if isinstance(value, dict):
            _apply(target[key], value, f"{where}.{key}")
        else:
            target[key] = value
