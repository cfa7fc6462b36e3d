"""Experiment configuration: the base ConfigDict and its validation.

Experiment modules (``experiments/*.py``) call ``base_config()`` and override
a few fields; ``validate`` runs before anything is compiled and names the
offending key. Configs are locked, so a misspelt override
(``--config.distill.stpes=3``) fails instead of being silently added.
"""
from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from dopd_jax.methods import METHODS, PASSES, LossConfig

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
    c.task = dict(domain="arith", difficulty="", misleading_fraction=0.2,
                  priv_form="exec_hints", max_prompt_len=16, max_priv_len=32,
                  n_test=1000, n_hard=1000)
    c.tokenizer = dict(vocab_size=64, corpus_size=3000)
    c.teacher = dict(model=model_config(96, 3, 4, 2, 256), steps=1200, batch_size=64,
                     lr=3e-3, warmup_steps=50, p_dropout=0.5, max_len=96)
    c.student = dict(model=model_config(64, 2, 4, 2, 192), steps=300, batch_size=64,
                     lr=3e-3, warmup_steps=30, p_dropout=0.5, max_len=96)
    loss = dataclasses.asdict(LossConfig())
    loss.update(top_k=16, gap_threshold=-1.0, is_clip=(), adv_clip=0.0, chunk_size=0)
    c.distill = dict(
        methods=("opd", "privt", "opsd", "dopd"), steps=300, batch_prompts=16,
        n_samples=4, lr=1e-3, warmup_steps=10, max_new_tokens=32, temperature=1.0,
        top_k=0, top_p=1.0, loss=loss, priv_student="", opsd_teacher="frozen",
        ema_decay=0.99, log_every=10, eval_every=100, eval_n=200,
        log_passes=("teacher", "priv_teacher"))
    c.eval = dict(batch_size=256)
    c.lock()
    return c


def shrink_to_smoke(c: ml_collections.ConfigDict) -> None:
    """Shrinks a config of this family in place to run in about a minute on one core."""
    c.teacher.model = model_config(32, 1, 2, 1, 64)
    c.student.model = model_config(32, 1, 2, 1, 64)
    c.teacher.steps, c.student.steps, c.distill.steps = 20, 10, 4
    c.distill.log_every, c.distill.eval_every, c.distill.eval_n = 2, 4, 16
    c.distill.batch_prompts, c.distill.n_samples, c.distill.max_new_tokens = 4, 2, 24
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


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"config.{key}: {msg}")


def loss_config(c: ml_collections.ConfigDict) -> LossConfig:
    """Converts ``config.distill.loss`` into the static ``LossConfig``."""
    d = c.distill.loss.to_dict()
    d["gap_threshold"] = None if d["gap_threshold"] < 0 else float(d["gap_threshold"])
    d["is_clip"] = tuple(d["is_clip"]) or None
    d["adv_clip"] = d["adv_clip"] or None
    d["chunk_size"] = d["chunk_size"] or None
    return LossConfig(**d)


def validate(c: ml_collections.ConfigDict) -> None:
    """Checks every field a run depends on; raises ValueError naming the key."""
    d = c.distill
    for m in d.methods:
        _check(m in METHODS, "distill.methods", f"unknown method {m!r}; valid: {sorted(METHODS)}")
    needs_p = [m for m in d.methods if METHODS[m].needs_privilege]
    _check(not needs_p or c.task.priv_form != "none", "task.priv_form",
           f"methods {needs_p} need privileged context but priv_form is 'none'")
    _check(d.temperature > 0, "distill.temperature", f"must be > 0, got {d.temperature}")
    _check(0 < d.top_p <= 1, "distill.top_p", f"must be in (0, 1], got {d.top_p}")
    _check(d.top_k >= 0, "distill.top_k", f"must be >= 0 (0 = off), got {d.top_k}")
    _check(d.loss.top_k >= 1, "distill.loss.top_k", f"must be >= 1, got {d.loss.top_k}")
    _check(d.loss.form in ("pg", "analytic"), "distill.loss.form",
           f"must be 'pg' or 'analytic', got {d.loss.form!r}")
    for k in ("kind", "opsd_kind"):
        _check(d.loss[k] in ("fkl", "rkl", "jsd"), f"distill.loss.{k}",
               f"must be 'fkl', 'rkl' or 'jsd', got {d.loss[k]!r}")
    _check(d.loss.topk_mode in ("renormalize", "generalized"), "distill.loss.topk_mode",
           f"must be 'renormalize' or 'generalized', got {d.loss.topk_mode!r}")
    _check(d.loss.hs_target in ("priv_student", "teacher"), "distill.loss.hs_target",
           f"must be 'priv_student' or 'teacher', got {d.loss.hs_target!r}")
    _check(d.priv_student in ("",) + PRIV_STUDENT_MODES, "distill.priv_student",
           f"must be one of {PRIV_STUDENT_MODES} (or '' for the method default)")
    _check(d.opsd_teacher in ("frozen", "live"), "distill.opsd_teacher",
           f"must be 'frozen' or 'live', got {d.opsd_teacher!r}")
    for key in ("steps", "batch_prompts", "n_samples", "max_new_tokens", "log_every"):
        _check(d[key] >= 1, f"distill.{key}", f"must be >= 1, got {d[key]}")
    for stage in ("teacher", "student"):
        _check(0 <= c[stage].p_dropout <= 1, f"{stage}.p_dropout", "must be in [0, 1]")
        _check(c[stage].steps >= 1, f"{stage}.steps", "must be >= 1")
    for p in d.log_passes:
        _check(p in PASSES, "distill.log_passes", f"unknown pass {p!r}; valid: {PASSES}")
    _check(c.task.max_prompt_len >= 2, "task.max_prompt_len", "must be >= 2")


def priv_student_mode(c: ml_collections.ConfigDict, method: str) -> str:
    """Where the privileged student's parameters come from for ``method``."""
    if method == "opsd":
        return "frozen" if c.distill.opsd_teacher == "frozen" else "live"
    return c.distill.priv_student or "live"
