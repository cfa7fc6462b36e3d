"""Validation of experiment configs: every field checked before anything compiles."""
from __future__ import annotations

import ml_collections

from dopd_jax.config import PRIV_STUDENT_MODES, resolve_run
from dopd_jax.methods import METHODS, PASSES


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"config.{key}: {msg}")


def validate_distributed(c: ml_collections.ConfigDict) -> None:
    """Checks ``config.distributed`` (before ``jax.distributed.initialize`` uses it)."""
    d = c.get("distributed")
    if d is None:
        return
    _check(d.num_processes >= 1, "distributed.num_processes", f"must be >= 1, got {d.num_processes}")
    _check(0 <= d.process_id < d.num_processes, "distributed.process_id",
           f"must be in [0, {d.num_processes}), got {d.process_id}")
    _check(d.num_processes == 1 or bool(d.coordinator_address),
           "distributed.coordinator_address", "must be HOST:PORT when num_processes > 1")


def validate(c: ml_collections.ConfigDict) -> None:
    """Checks every field a run depends on; raises ValueError naming the key."""
    validate_distributed(c)
    _check(len(c.distill.methods) == len(set(c.distill.methods)), "distill.methods",
           f"duplicate entries in {tuple(c.distill.methods)}")
    runs = {name: resolve_run(c, name) for name in c.distill.methods}
    needs_p = [n for n, (m, _) in runs.items() if METHODS[m].needs_privilege]
    _check(not needs_p or c.task.priv_form != "none", "task.priv_form",
           f"methods {needs_p} need privileged context but priv_form is 'none'")
    for _, d in runs.values():
        _validate_distill(d)
    _validate_stages(c)
    _validate_mesh(c, runs)


def _validate_mesh(c: ml_collections.ConfigDict, runs: dict) -> None:
    """The mesh must fit the devices and divide every batch's rows."""
    import jax  # device count: only known once JAX is up

    from dopd_jax import sharding, sharding_rules

    try:
        mesh = sharding.make_mesh(dict(c.mesh))
    except ValueError as e:
        raise ValueError(f"config.mesh: {e}") from e
    dp = sharding_rules.data_parallel_size(mesh)
    rows = {f"{s}.batch_size": c[s].batch_size for s in ("teacher", "student")}
    for name, (_, d) in runs.items():
        rows[f"distill.batch_prompts ({name})"] = d.batch_prompts
    rows["eval.batch_size"] = c.eval.batch_size
    for key, n in rows.items():
        _check(n % dp == 0, "mesh", f"{key} = {n} is not divisible by the data-parallel "
               f"size {dp} (data x fsdp over {jax.device_count()} devices)")


def _validate_distill(d: ml_collections.ConfigDict) -> None:
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
    _check(d.checkpoint_every >= 0, "distill.checkpoint_every", "must be >= 0 (0 = only at the end)")
    for key in ("steps", "batch_prompts", "n_samples", "max_new_tokens", "log_every"):
        _check(d[key] >= 1, f"distill.{key}", f"must be >= 1, got {d[key]}")
    for p in d.log_passes:
        _check(p in PASSES, "distill.log_passes", f"unknown pass {p!r}; valid: {PASSES}")


def _validate_stages(c: ml_collections.ConfigDict) -> None:
    _check(c.checkpoint_keep >= 1, "checkpoint_keep", f"must be >= 1, got {c.checkpoint_keep}")
    for stage in ("teacher", "student"):
        _check(c[stage].checkpoint_every >= 0, f"{stage}.checkpoint_every",
               "must be >= 0 (0 = only at the end)")
        _check(0 <= c[stage].p_dropout <= 1, f"{stage}.p_dropout", "must be in [0, 1]")
        _check(c[stage].steps >= 1, f"{stage}.steps", "must be >= 1")
    _check(c.task.max_prompt_len >= 2, "task.max_prompt_len", "must be >= 2")


