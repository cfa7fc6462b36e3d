"""Checks of an experiment's specs before anything is built or compiled; errors name the key."""

from __future__ import annotations

import os

import ml_collections

from dopd_jax.data import sources
from dopd_jax.methods import pass_from_name
from dopd_jax.models.chat import P_POSITIONS
from dopd_jax.pipeline import hf_models
from dopd_jax.pipeline.specs import ExperimentSpec, ModelSpec, RunSpec, experiment_spec
from dopd_jax.trainer import early_stop

MODEL_SOURCES = ("scratch", "workdir:PATH", "hf:PATH")
CHAT_TEMPLATES = ("none", "checkpoint")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"config.{key}: {msg}")


def validate_distributed(c: ml_collections.ConfigDict) -> None:
    """Checks ``config.distributed`` (before ``jax.distributed.initialize`` uses it)."""
    d = c.get("distributed")
    if d is None:
        return
    _check(
        d.num_processes >= 1, "distributed.num_processes", f"must be >= 1, got {d.num_processes}"
    )
    _check(
        0 <= d.process_id < d.num_processes,
        "distributed.process_id",
        f"must be in [0, {d.num_processes}), got {d.process_id}",
    )
    _check(
        d.num_processes == 1 or bool(d.coordinator_address),
        "distributed.coordinator_address",
        "must be HOST:PORT when num_processes > 1",
    )


def validate(c: ml_collections.ConfigDict) -> ExperimentSpec:
    """Reads and checks the whole config; returns its specs (ValueError naming the key)."""
    validate_distributed(c)
    spec = experiment_spec(c)
    for run in spec.runs:
        _validate_run(run)
    needs_p = [r.name for r in spec.runs if r.method.needs_privilege(r.config)]
    _check(
        not needs_p or spec.task.priv_form != "none",
        "task.priv_form",
        f"runs {needs_p} need privileged context but priv_form is 'none'",
    )
    for key, m in (("teacher", spec.teacher), ("student", spec.student)):
        _validate_model(key, m)
    _check(
        spec.checkpoint_keep >= 1, "checkpoint_keep", f"must be >= 1, got {spec.checkpoint_keep}"
    )
    _check(spec.task.max_prompt_len >= 2, "task.max_prompt_len", "must be >= 2")
    _check(
        0 <= spec.task.max_overlength_fraction < 1,
        "task.max_overlength_fraction",
        "must be in [0, 1)",
    )
    _check(spec.eval.avg_k >= 0, "eval.avg_k", f"must be >= 0, got {spec.eval.avg_k}")
    _validate_tokenizer(spec)
    _validate_mesh(spec)
    _validate_run_graph(spec)
    if spec.task.source == "generated":
        check_domains(spec, sources.task_domains(spec.task))
    hf_models.check_sources(spec)  # checkpoint files, tokenizer, shared vocabulary
    return spec


def _validate_run_graph(spec: ExperimentSpec) -> None:
    """Run sources name earlier runs; runs that read domain teachers have them."""
    names = [r.name for r in spec.runs]
    teacher_runs = {s[len("run:") :] for _, s in spec.domain_teachers if s.startswith("run:")}
    for domain, source in spec.domain_teachers:
        ok = source == "teacher" or (source.startswith("run:") and source[4:] in names)
        _check(
            ok,
            f"distill.teachers.{domain}",
            f"must be 'teacher' or 'run:NAME' with NAME in distill.methods {names}, got {source!r}",
        )
    for i, r in enumerate(spec.runs):
        if r.init:
            _check(
                r.init.startswith("run:") and r.init[4:] in names[:i],
                "distill.init",
                f"run {r.name!r}: must be '' (the student init) or 'run:NAME' of an earlier "
                f"run in distill.methods {names[:i]}, got {r.init!r}",
            )
        for domain, source in r.teachers:
            _check(
                source == "teacher" or (source.startswith("run:") and source[4:] in names[:i]),
                f"distill.variants.{r.name}.teachers.{domain}",
                f"must be 'teacher' or 'run:NAME' of an earlier run in distill.methods "
                f"{names[:i]}, got {source!r}",
            )
        if r.method.reads_domain_teachers(r.config):
            _check(
                bool(r.teachers or spec.domain_teachers),
                "distill.teachers",
                f"run {r.name!r} ({r.method.name}) reads one teacher per domain: set "
                "distill.teachers = {domain: 'teacher' | 'run:NAME'}",
            )
            late = [] if r.teachers else sorted(t for t in teacher_runs if t not in names[:i])
            _check(
                not late,
                "distill.methods",
                f"run {r.name!r} reads the domain teachers {late}: list them before it",
            )


def check_domains(spec: ExperimentSpec, task_domains) -> None:
    """Every domain of the task has a teacher and every teacher has prompts; runs
    train on domains the task has."""
    known = list(task_domains)
    mappings = [("distill.teachers", spec.domain_teachers)]
    mappings += [(f"distill.variants.{r.name}.teachers", r.teachers) for r in spec.runs]
    for key, pairs in mappings:
        if not pairs:
            continue
        given = [d for d, _ in pairs]
        missing = sorted(set(known) - set(given))
        extra = sorted(set(given) - set(known))
        _check(
            not missing and not extra,
            key,
            f"the task's domains are {known}; domains without a teacher: {missing}, "
            f"teachers without prompts: {extra}",
        )
    for r in spec.runs:
        bad = sorted(set(r.domains) - set(known))
        _check(
            not bad,
            "distill.domains",
            f"run {r.name!r}: domains {bad} are not among the task's domains {known}",
        )


def _validate_tokenizer(spec: ExperimentSpec) -> None:
    t = spec.tokenizer
    _check(
        t.chat_template in CHAT_TEMPLATES,
        "tokenizer.chat_template",
        f"must be one of {CHAT_TEMPLATES}, got {t.chat_template!r}",
    )
    _check(
        t.p_position in P_POSITIONS,
        "tokenizer.p_position",
        f"must be one of {P_POSITIONS}, got {t.p_position!r}",
    )
    _check(
        t.chat_template == "none" or bool(spec.hf_models()),
        "tokenizer.chat_template",
        "'checkpoint' needs a model with an hf:PATH source",
    )


def _validate_model(key: str, m: ModelSpec) -> None:
    _check(
        m.source == "scratch" or m.source.startswith(("workdir:", "hf:")),
        f"{key}.source",
        f"must be one of {MODEL_SOURCES}, got {m.source!r}",
    )
    dtypes = m.arch_dict()
    _check(
        key == "teacher" or m.hf_path is not None or dtypes.get("param_dtype") == "float32",
        f"{key}.model.param_dtype",
        f"must be 'float32' for a trained model, got {dtypes.get('param_dtype')!r}: AdamW "
        "updates (~lr per weight) are far below bfloat16's spacing and would be rounded "
        "away; keep float32 master weights and set model.dtype='bfloat16' to compute "
        "in bfloat16",
    )
    if m.source.startswith("workdir:"):
        root = m.source[len("workdir:") :]
        needed = ("config.json", "tokenizer.model", m.name)
        missing = [n for n in needed if not os.path.exists(os.path.join(root, n))]
        _check(
            not missing,
            f"{key}.source",
            f"{root} is not a finished experiment workdir (missing {missing})",
        )
    _check(m.checkpoint_every >= 0, f"{key}.checkpoint_every", "must be >= 0 (0 = only at the end)")
    _check(0 <= m.p_dropout <= 1, f"{key}.p_dropout", "must be in [0, 1]")
    _check(m.steps >= 1 or m.source != "scratch", f"{key}.steps", "must be >= 1")
    _check(m.optim.warmup_steps >= 0, f"{key}.warmup_steps", "must be >= 0")


def _validate_run(r: RunSpec) -> None:
    try:
        _check_run(r)
    except ValueError as e:
        raise ValueError(f"{e} (run {r.name!r})") from e


def _check_run(r: RunSpec) -> None:
    key = "distill"
    _check(r.temperature > 0, f"{key}.temperature", f"must be > 0, got {r.temperature}")
    _check(0 < r.top_p <= 1, f"{key}.top_p", f"must be in (0, 1], got {r.top_p}")
    _check(r.top_k >= 0, f"{key}.top_k", f"must be >= 0 (0 = off), got {r.top_k}")
    _check(r.diag_top_k >= 1, f"{key}.diag_top_k", f"must be >= 1, got {r.diag_top_k}")
    _check(r.checkpoint_every >= 0, f"{key}.checkpoint_every", "must be >= 0 (0 = only at the end)")
    _check(r.eval_every >= 0, f"{key}.eval_every", "must be >= 0 (0 = no in-run evaluation)")
    _check(r.optim.warmup_steps >= 0, f"{key}.warmup_steps", "must be >= 0")
    if r.method.prepare is not None and r.method.name == "merge":
        _check(r.steps == 0, f"{key}.steps", f"merge trains nothing: needs steps=0, got {r.steps}")
    else:
        _check(r.steps >= 1, f"{key}.steps", f"must be >= 1, got {r.steps}")
    for field in (
        "batch_prompts",
        "n_samples",
        "max_new_tokens",
        "log_every",
        "num_microbatches",
    ):
        _check(getattr(r, field) >= 1, f"{key}.{field}", f"must be >= 1, got {getattr(r, field)}")
    rows = r.batch_prompts * r.n_samples
    _check(
        rows % r.num_microbatches == 0,
        f"{key}.num_microbatches",
        f"{r.num_microbatches} does not divide the {rows} rollouts (batch_prompts x n_samples)",
    )
    _check(
        r.rollout_batch >= 0 and (r.rollout_batch == 0 or r.batch_prompts % r.rollout_batch == 0),
        f"{key}.rollout_batch",
        f"must be 0 (all prompts at once) or divide batch_prompts={r.batch_prompts}, "
        f"got {r.rollout_batch}",
    )
    _check(r.memory_budget_gb >= 0, f"{key}.memory_budget_gb", "must be >= 0 (0 = no check)")
    unknown = sorted(set(dict(r.early_stop)) - set(early_stop.FIELDS))
    _check(not unknown, f"{key}.early_stop", f"unknown keys {unknown}; valid: {early_stop.FIELDS}")
    try:
        early_stop.EarlyStop(**dict(r.early_stop))
    except ValueError as e:
        raise ValueError(f"config.{key}.{e}") from e
    for name in r.log_passes:
        try:
            p = pass_from_name(name)
        except ValueError as e:
            raise ValueError(f"config.distill.log_passes: {name!r}: {e}") from e
        _check(
            p.is_teacher,
            "distill.log_passes",
            f"{name!r}: only teacher passes are logged (teacher, priv_teacher, "
            "teacher/<name>, priv_teacher/<name>)",
        )


def _validate_mesh(spec: ExperimentSpec) -> None:
    """The mesh must fit the devices and divide every batch's rows."""
    import jax  # device count: only known once JAX is up

    from dopd_jax import sharding
    from dopd_jax.sharding import rules

    try:
        mesh = sharding.make_mesh(dict(spec.mesh))
    except ValueError as e:
        raise ValueError(f"config.mesh: {e}") from e
    dp = rules.data_parallel_size(mesh)
    rows = {
        "teacher.batch_size": spec.teacher.batch_size,
        "student.batch_size": spec.student.batch_size,
        "eval.batch_size": spec.eval.batch_size,
    }
    for r in spec.runs:
        rows[f"distill.batch_prompts ({r.name})"] = r.batch_prompts
        mb_rows = r.batch_prompts * r.n_samples // max(r.num_microbatches, 1)
        rows[f"rollouts per micro-batch ({r.name}: num_microbatches)"] = mb_rows
    for key, n in rows.items():
        _check(
            n % dp == 0,
            "mesh",
            f"{key} = {n} is not divisible by the data-parallel "
            f"size {dp} (data x fsdp over {jax.device_count()} devices)",
        )
