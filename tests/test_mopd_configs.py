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
            lambda c: setattr(c.distill, "teachers", {"arith": "run:sft_arith"}),
            r"domains without a teacher: \['sort'\]",
        ),
        (
            lambda c: setattr(
                c.distill,
                "teachers",
                {"arith": "run:sft_arith", "sort": "run:sft_sort", "code": "teacher"},
            ),
            r"teachers without prompts: \['code'\]",
        ),
        (
            lambda c: setattr(c.distill, "teachers", {"arith": "run:nope", "sort": "teacher"}),
            "distill.teachers.arith: must be 'teacher' or 'run:NAME'",
        ),
        (lambda c: setattr(c.distill, "teachers", {}), "reads one teacher per domain"),
        (
            lambda c: setattr(c.distill, "methods", ("mopd", "sft_arith", "sft_sort")),
            "list them before it",
        ),
        (lambda c: c.distill.variants.merge_avg.update(steps=3), "needs steps=0"),
        (
            lambda c: c.distill.variants.cascade_arith.update(init="run:cascade_sort"),
            "'run:NAME' of an earlier run",
        ),
        (
            lambda c: c.distill.variants.sft_arith.update(domains=("code",)),
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
    control = run_models.resolve(ctx, runs["mopd_pg_more"], "teacher", "init", finished)
    assert control.domain_teachers == first.domain_teachers  # round-1 teachers
    assert control.start == second.start  # from the round-1 student, as round 2


def test_mopd_smoke_config_is_valid():
    spec = config_checks.validate(_mopd_config())
    assert spec.run_refs() == {"sft_arith", "sft_sort", "cascade_arith"}


@pytest.mark.parametrize(
    "module,arg",
    [
        ("mopd_domains", None),
        ("mopd_domains", "teacher=rl"),
        ("mopd_forms", "teacher=rl,rounds=2"),
        ("mopd_forms", "teacher=sft"),
    ],
)
def test_full_size_mopd_configs_are_valid_and_share_one_setting(module, arg):
    from dopd_jax.pipeline.config import sized

    c = load_experiment(f"experiments/{module}.py", arg)
    config_checks.validate(c)
    assert c.task.domain == "arith,sort,linear" and c.task.priv_form == "none"
    assert c.student.model == sized("m") and c.student.steps == 1500
    assert c.distill.lr == 3e-4  # GRPO collapsed at the main setting's 3e-3


def test_mopd_domains_student_runs_share_one_rate_and_distill_rows_subset():
    from dopd_jax.pipeline.sweep import module_axes

    full = load_experiment("experiments/mopd_domains.py", None)
    old = load_experiment("experiments/mopd_domains.py", "full_lr=3e-3")
    close = load_experiment("experiments/mopd_domains.py", "rows=distill")
    config_checks.validate(close)
    assert close.distill.methods == (
        ("sft_arith", "sft_sort", "sft_linear", "mopd", "mopd_topk", "offpolicy_ft")
    )
    assert set(close.distill.variants) == {"sft_arith", "sft_sort", "sft_linear"} | {
        "mopd_topk",
        "offpolicy_ft",
    }
    for name in ("mopd_topk", "offpolicy_ft"):
        assert full.distill.variants[name].lr == full.distill.lr == 3e-4
        assert old.distill.variants[name].lr == 3e-3
        # The same run otherwise: only the rate tells the two apart.
        assert {**full.distill.variants[name], "lr": 0} == {**old.distill.variants[name], "lr": 0}
        assert close.distill.variants[name] == full.distill.variants[name]
    assert close.distill.variants.sft_arith == full.distill.variants.sft_arith
    assert module_axes("experiments/mopd_domains.py")["variants"] == ("", "full_lr=3e-3")
    with pytest.raises(ValueError, match=r"full_lr='1e-3': valid values \['3e-4', '3e-3'\]"):
        load_experiment("experiments/mopd_domains.py", "full_lr=1e-3")


def test_domain_teachers_train_on_their_own_domain_at_their_origins_setting():
    from dopd_jax.pipeline.config import SFT_TEACHER_STEP, domain_teacher_runs

    sft = domain_teacher_runs("sft", ("arith", "sort"))
    assert set(sft) == {"sft_arith", "sft_sort"}
    assert sft["sft_sort"]["steps"] == 600
    assert domain_teacher_runs("rl", ("arith",))["rl_arith"]["steps"] == 200
    assert domain_teacher_runs("sft", ("arith",), smoke=True)["sft_arith"]["steps"] == 2
    assert sft["sft_sort"]["domains"] == ("sort",)
    assert sft["sft_arith"]["method"] == "gkd" and sft["sft_arith"]["lmbda"] == 0.0
    assert {k: sft["sft_arith"][k] for k in SFT_TEACHER_STEP} == SFT_TEACHER_STEP
    assert "batch_prompts" not in domain_teacher_runs("sft", ("arith",), 2, smoke=True)["sft_arith"]
    rl = domain_teacher_runs("rl", ("arith",), 200, prefix="2", init="run:mopd_pg")
    assert rl == {
        "rl2_arith": dict(
            method="grpo",
            domains=("arith",),
            steps=200,
            init="run:mopd_pg",
            label="RL teacher arith, round 2",
        )
    }
    with pytest.raises(ValueError, match="origin must be 'rl' or 'sft', got 'ppo'"):
        domain_teacher_runs("ppo", ("arith",), 2)


def test_normalized_score_skips_domains_where_the_teacher_does_not_beat_the_init():
    from dopd_jax.pipeline.report import format_normalized, normalized_scores

    def acc(**kw):
        return {f"acc_test_{d}": v for d, v in kw.items()}

    results = {
        "references": {"student_init": acc(arith=20.0, sort=100.0, linear=10.0)},
        "methods": {
            "t_arith": acc(arith=80.0),
            "t_sort": acc(sort=100.0),
            "t_linear": acc(linear=60.0),
            "mopd": {**acc(arith=50.0, sort=99.0, linear=35.0), "label": "MOPD"},
        },
    }
    teachers = [("arith", "run:t_arith"), ("sort", "run:t_sort"), ("linear", "run:t_linear")]
    row = normalized_scores(results, teachers)["mopd"]
    assert row["arith"] == pytest.approx(0.5) and row["linear"] == pytest.approx(0.5)
    assert row["sort"] is None  # the init is already at the teacher's 100%
    assert row["mean"] == pytest.approx(0.5)  # over arith and linear only
    results["methods"]["t_arith"] = acc(arith=10.0)  # a teacher below the init
    results["methods"]["t_linear"] = acc()  # a missing score
    assert normalized_scores(results, teachers)["mopd"]["mean"] is None
    results["normalized"] = normalized_scores(results, teachers)
    assert "MOPD" in format_normalized(results)
