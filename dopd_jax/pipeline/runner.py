"""The staged experiment behind ``dopd_jax.run``.

Stages, each cached in the workdir so a restarted run resumes where it was:
  1. tokenizer      trained on the task corpus           -> tokenizer.model
  2. teacher        privileged teacher by SFT            -> teacher/
  3. student        student warm-up with p-dropout       -> student_init/
  4. references     teacher / student-init accuracies    -> references.json
  5. one run per distillation method from the same init  -> runs/METHOD/result.json
  6. the results table                                   -> results.json
"""
from __future__ import annotations

import json
import os
import time

import jax
import ml_collections

from dopd_jax import config as config_lib
from dopd_jax import distill_stage, stages, validation
from dopd_jax.metric_writer import MetricWriter, NullMetricWriter
from dopd_jax.report import format_table


def _load_json(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def _save_json(path, obj):
    """Writes ``obj`` atomically on process 0 (other processes write nothing)."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def run_experiment(cfg: ml_collections.ConfigDict, workdir: str, *, progress=None,
                   log=print) -> dict:
    """Runs (or resumes) every stage and returns the results dict.

    Args:
      cfg: a config from an experiment module's ``get_config``.
      workdir: where stage outputs, metrics and results go.
      progress: optional ``stages.Progress`` (a tqdm bar by default).
      log: sink for human-readable messages (warnings included).

    With several processes (``jax.distributed`` initialised) every process runs
    this with the same config and workdir; only process 0 writes files, logs and
    shows progress, and all of them return the results.
    """
    validation.validate(cfg)
    main = jax.process_index() == 0
    if not main:
        log = lambda msg: None  # noqa: E731 (process 0 reports)
    os.makedirs(workdir, exist_ok=True)
    _check_config_matches(cfg, workdir)
    writer = MetricWriter(workdir) if main else NullMetricWriter()
    progress = progress or stages.Progress.for_config(cfg)
    try:
        ctx = stages.build_context(cfg, workdir, log)
        teacher = stages.teacher_stage(ctx, writer, progress)
        student = stages.student_stage(ctx, writer, progress)
        refs = _references(ctx, teacher, student, workdir)
        runs = {}
        for method in cfg.distill.methods:
            path = os.path.join(workdir, "runs", method, "result.json")
            result = _load_json(path)
            distill_cfg = config_lib.to_json_dict(config_lib.resolve_run(cfg, method)[1])
            if result is None or result.get("distill_config") != distill_cfg:
                t0 = time.perf_counter()
                result = distill_stage.distill_stage(ctx, method, teacher, student, writer, progress)
                result["wall_time_s"] = time.perf_counter() - t0
                result["distill_config"] = distill_cfg
                _save_json(path, result)
            else:
                progress.skip(cfg.distill.steps)
            runs[method] = result
    finally:
        writer.close()
        progress.close()
    results = {"references": refs, "methods": runs, "config": cfg.to_dict()}
    _save_json(os.path.join(workdir, "results.json"), results)
    log(format_table(results))
    return results


def _references(ctx, teacher, student, workdir) -> dict:
    path = os.path.join(workdir, "references.json")
    refs = _load_json(path)
    if refs is None:
        refs = {"teacher": stages.full_eval(ctx, teacher),
                "student_init": stages.full_eval(ctx, student)}
        _save_json(path, refs)
    return refs


_STAGE_KEYS = ("seed", "task", "tokenizer", "teacher", "student")


def _check_config_matches(cfg, workdir) -> None:
    """Refuses to reuse stage outputs made under a different config."""
    path = os.path.join(workdir, "config.json")
    current = config_lib.to_json_dict(cfg)
    saved = _load_json(path)
    if saved is not None:
        diff = sorted(k for k in _STAGE_KEYS if saved.get(k) != current[k])
        if diff:
            raise ValueError(
                f"workdir {workdir} holds stages built with a different config (keys {diff} "
                "differ); use a fresh --workdir or restore the original settings")
    _save_json(path, current)

