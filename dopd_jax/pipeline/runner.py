"""The staged, resumable experiment: context, teacher, student, one distillation per run.

``run_experiment(cfg, workdir)`` reads the config once into typed specs
(``specs.experiment_spec``) and hands those to every stage.
"""

from __future__ import annotations

import errno
import json
import os
import time

import jax
import ml_collections

from dopd_jax.pipeline import config as config_lib
from dopd_jax.pipeline import config_checks, report, run_models
from dopd_jax.pipeline.context import Progress, build_context
from dopd_jax.pipeline.distill_stage import distill_stage, full_eval
from dopd_jax.pipeline.sft_stage import model_stage, will_train
from dopd_jax.pipeline.specs import ExperimentSpec, reuse_identity
from dopd_jax.pipeline.timings import StageTimes
from dopd_jax.trainer.metric_writer import MetricWriter, NullMetricWriter


def _load_json(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def _save_json(path, obj):
    """Writes ``obj`` atomically on process 0 (other processes write nothing).

    Keys keep their order (evaluation sets, then references and runs, as made), so
    a table printed from a reused workdir has the columns and rows of the fresh run.
    """
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def check_workdir(workdir: str) -> None:
    """The workdir must be a writable directory (created when missing); error names it."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir} exists and is not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--workdir {workdir} cannot be created: {e.strerror}") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {workdir} is not writable ({os.strerror(errno.EACCES)})")


def run_experiment(
    cfg: ml_collections.ConfigDict, workdir: str, *, progress=None, log=print
) -> dict:
    """Runs (or resumes) every stage and returns the results dict.

    Args:
      cfg: a config from an experiment module's ``get_config``.
      workdir: where stage outputs, metrics and results go.
      progress: optional ``context.Progress`` (a tqdm bar by default).
      log: sink for human-readable messages (warnings included).

    With several processes (``jax.distributed`` initialised) every process runs
    this with the same config and workdir; only process 0 writes files, logs and
    shows progress, and all of them return the results.
    """
    spec = config_checks.validate(cfg)
    main = jax.process_index() == 0
    if not main:
        log = lambda msg: None  # noqa: E731 (process 0 reports)
    check_workdir(workdir)
    _check_config_matches(spec, cfg, workdir)
    writer = MetricWriter(workdir) if main else NullMetricWriter()
    progress = progress or Progress.for_spec(spec)
    try:
        results = _run_stages(spec, workdir, writer, progress, log)
    finally:
        writer.close()
        progress.close()
    results["config"] = cfg.to_dict()
    _save_json(os.path.join(workdir, "results.json"), results)
    log(report.format_table(results))
    return results


def _run_stages(spec: ExperimentSpec, workdir: str, writer, progress, log) -> dict:
    times = StageTimes(workdir)
    with times.stage("context"):  # task data and tokenizer
        ctx = build_context(spec, workdir, log)
    built = {}
    for role in ("teacher", "student"):
        m = getattr(spec, role)
        with times.stage(f"sft/{m.name}", ran=will_train(ctx, m)):
            built[role] = model_stage(ctx, m, writer, progress)
    teacher, student = built["teacher"], built["student"]
    refs = _references(ctx, teacher, student, workdir, times)
    runs, finished, kept = {}, {}, spec.run_refs()
    for run in spec.runs:
        path = os.path.join(workdir, "runs", run.name, "result.json")
        result, params = _load_json(path), None
        saved = None if result is None else reuse_identity(result.get("run_spec", {}))
        if saved != reuse_identity(run.to_json()):
            t0 = time.perf_counter()
            models = run_models.resolve(ctx, run, teacher, student, finished)
            result, params = distill_stage(ctx, run, models, writer, progress)
            result["wall_time_s"] = time.perf_counter() - t0
            for part, seconds in result.pop("wall_s").items():
                times.record(f"distill/{run.name}/{part}", seconds)
            result["run_spec"] = run.to_json()
            if run.name in kept:  # before result.json: a finished run has its params
                finished[run.name] = run_models.keep(ctx, run.name, params, student)
            _save_json(path, result)
        else:
            progress.skip(run.steps)
            result["label"] = run.label  # relabelling does not retrain (reuse_identity)
            if run.name in kept:
                finished[run.name] = run_models.keep(ctx, run.name, None, student)
        runs[run.name] = result
    out = {"references": refs, "methods": runs, "wall_times_s": times.as_dict()}
    if spec.domain_teachers:
        out["normalized"] = report.normalized_scores(out, spec.domain_teachers)
    return out


def _references(ctx, teacher, student, workdir, times: StageTimes) -> dict:
    path = os.path.join(workdir, "references.json")
    refs = _load_json(path)
    if refs is None:
        with times.stage("eval/references"):
            refs = {"teacher": full_eval(ctx, teacher), "student_init": full_eval(ctx, student)}
        _save_json(path, refs)
    return refs


def _check_config_matches(spec: ExperimentSpec, cfg, workdir) -> None:
    """Refuses to reuse stage outputs made under a different config."""
    path = os.path.join(workdir, "stages.json")
    current = spec.stage_json()
    saved = _load_json(path)
    if saved is not None:
        diff = sorted(k for k in current if saved.get(k) != current[k])
        if diff:
            raise ValueError(
                f"workdir {workdir} holds stages built with a different config (keys {diff} "
                "differ); use a fresh --workdir or restore the original settings"
            )
    _save_json(path, current)
    _save_json(os.path.join(workdir, "config.json"), config_lib.to_json_dict(cfg))
