"""The MOPD experiment modules' configs: pipeline errors name the problem, and
multi-round MOPD reads its own round's teachers."""

import pytest

from dopd_jax.pipeline import config_checks
from dopd_jax.pipeline.config import load_experiment


def _mopd_config():
    return load_experiment("experiments/mopd_domains.py", "smoke")


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda c: setattr(c.distill, "teachers", {"arith": "run:grpo_arith"}),
            r"domains without a teacher: \['sort'\]",
        ),
        (
            lambda c: setattr(
                c.distill,
                "teachers",
                {"arith": "run:grpo_arith", "sort": "run:grpo_sort", "code": "teacher"},
            ),
            r"teachers without prompts: \['code'\]",
        ),
        (
            lambda c: setattr(c.distill, "teachers", {"arith": "run:nope", "sort": "teacher"}),
            "distill.teachers.arith: must be 'teacher' or 'run:NAME'",
        ),
        (lambda c: setattr(c.distill, "teachers", {}), "reads one teacher per domain"),
        (
            lambda c: setattr(c.distill, "methods", ("mopd", "grpo_arith", "grpo_sort")),
            "list them before it",
        ),
        (lambda c: c.distill.variants.merge_avg.update(steps=3), "needs steps=0"),
        (
            lambda c: c.distill.variants.cascade_arith.update(init="run:cascade_sort"),
            "'run:NAME' of an earlier run",
        ),
        (
            lambda c: c.distill.variants.grpo_arith.update(domains=("code",)),
            r"domains \['code'\] are not among the task's domains",
        ),
    ],
)
def test_mopd_pipeline_config_errors_name_the_problem(edit, message):
    c = _mopd_config()
    edit(c)
    with pytest.raises(ValueError, match=message):
        config_checks.validate(c)


def _rounds_config():
    return load_experiment("experiments/mopd_forms.py", "rounds=2,smoke")


@pytest.mark.parametrize(
    "teachers,message",
    [
        (
            {"arith": "run:mopd_pg_r2", "sort": "run:rl2_sort"},
            "distill.variants.mopd_pg_r2.teachers.arith: must be 'teacher' or 'run:NAME' "
            "of an earlier run",
        ),
        (
            {"arith": "run:rl2_arith"},
            r"distill.variants.mopd_pg_r2.teachers: .*domains without a teacher: \['sort'\]",
        ),
    ],
)
def test_a_runs_own_teachers_are_checked_like_the_experiments(teachers, message):
    c = _rounds_config()
    c.distill.variants.mopd_pg_r2.teachers = teachers
    with pytest.raises(ValueError, match=message):
        config_checks.validate(c)


def test_multi_round_mopd_reads_its_own_teachers():
    from types import SimpleNamespace

    from dopd_jax.pipeline import run_models

    spec = config_checks.validate(_rounds_config())
    assert spec.run_refs() == {"rl_arith", "rl_sort", "mopd_pg", "rl2_arith", "rl2_sort"}
    finished = {name: f"final student of {name}" for name in spec.run_refs()}
    runs = {r.name: r for r in spec.runs}
    ctx = SimpleNamespace(spec=spec)
    first = run_models.resolve(ctx, runs["mopd_pg"], "teacher", "init", finished)
    second = run_models.resolve(ctx, runs["mopd_pg_r2"], "teacher", "init", finished)
    assert first.domain_teachers == {d: f"final student of rl_{d}" for d in ("arith", "sort")}
    assert first.start == "init"
    assert second.domain_teachers == {d: f"final student of rl2_{d}" for d in ("arith", "sort")}
    assert second.start == "final student of mopd_pg"
    assert "teachers" not in runs["mopd_pg"].identity()  # old results keep their identity


def test_mopd_smoke_config_is_valid():
    spec = config_checks.validate(_mopd_config())
    assert spec.run_refs() == {"grpo_arith", "grpo_sort", "cascade_arith"}


@pytest.mark.parametrize(
    "module,arg",
    [("mopd_domains", None), ("mopd_forms", "teacher=rl,rounds=2"), ("mopd_forms", "teacher=sft")],
)
def test_full_size_mopd_configs_are_valid_and_share_one_setting(module, arg):
    from dopd_jax.pipeline.config import sized

    c = load_experiment(f"experiments/{module}.py", arg)
    config_checks.validate(c)
    assert c.task.domain == "arith,sort,linear" and c.task.priv_form == "none"
    assert c.student.model == sized("m") and c.student.steps == 1500
    assert c.distill.lr == 3e-4  # GRPO collapsed at the main setting's 3e-3
