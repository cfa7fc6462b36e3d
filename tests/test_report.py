"""The results table: a workdir's saved results print the table of the fresh run."""

from dopd_jax.pipeline import report, runner


def _results():
    ref = {"acc_test": 0.642, "acc_hard": 0.563, "acc_priv": 0.792, "response_len": 24.9}
    run = dict(ref, label="vanilla OPD (T->S)", final={"student_entropy": 0.1}, wall_time_s=96)
    return {
        "references": {"teacher": ref, "student_init": dict(ref, acc_test=0.127)},
        "methods": {"opd": run},
        "wall_times_s": {"sft/teacher": 280.0},
    }


def test_saved_results_print_the_same_table(tmp_path):
    fresh = _results()
    path = str(tmp_path / "results.json")
    runner._save_json(path, fresh)
    table = report.format_table(runner._load_json(path))
    assert table == report.format_table(fresh)
    head, _, teacher, init, opd = table.splitlines()[:5]
    assert head.split()[:4] == ["model", "test%", "hard%", "priv%"]
    assert teacher.startswith("teacher") and init.startswith("student_init")
    assert opd.startswith("vanilla OPD") and "12.7" in init


def test_no_priv_column_where_the_task_has_no_privileged_input():
    results = dict(_results(), config={"task": {"priv_form": "none"}})
    assert report.format_table(results).split()[:3] == ["model", "test%", "hard%"]
    assert "priv%" not in report.format_table(results).splitlines()[0]
    results["config"]["task"]["priv_form"] = "exec_hints"
    assert "priv%" in report.format_table(results).splitlines()[0]


def test_mopd_tables_leave_out_the_teacher_no_domain_scores_against():
    results = dict(_results(), config={"distill": {"teachers": {"a": "run:t_a"}}})
    assert report.shown_references(results) == ["student_init"]
    rows = [line.split()[0] for line in report.format_table(results).splitlines()[2:4]]
    assert rows == ["student_init", "vanilla"]
    results["config"]["distill"]["teachers"]["b"] = "teacher"  # it scores domain b
    assert report.shown_references(results) == ["teacher", "student_init"]
