"""Seed sweeps: statistics against NumPy, stage sharing, resume by skipping, report files."""

import json
import os
import pathlib
import shutil
import textwrap

import numpy as np
import pytest

from dopd_jax.pipeline import aggregate, sweep


def _results(init, teacher, runs):
    return {
        "references": {
            "teacher": {"acc_test": teacher, "acc_hard": teacher / 2},
            "student_init": {"acc_test": init, "acc_hard": init / 2},
        },
        "methods": {
            name: {"acc_test": acc, "label": name.upper(), "final": {"student_entropy": 0.1 * i}}
            for i, (name, acc) in enumerate(runs.items())
        },
    }


def test_summary_matches_numpy_mean_and_sample_std():
    cells = [
        _results(0.1, 0.5, {"opd": 0.3, "dopd": 0.2}),
        _results(0.2, 0.6, {"opd": 0.4, "dopd": 0.1}),
        _results(0.1, 0.5, {"opd": 0.25}),  # dopd missing in one cell
    ]
    s = aggregate.summarize(cells)
    assert list(s) == ["teacher", "student_init", "opd", "dopd"]
    cells[0]["config"] = {"distill": {"methods": ["dopd", "opd"]}}
    assert list(aggregate.summarize(cells))[2:] == ["dopd", "opd"]
    mean, std, n = s["opd"]["acc_test"]
    np.testing.assert_allclose(
        [mean, std], [np.mean([0.3, 0.4, 0.25]), np.std([0.3, 0.4, 0.25], ddof=1)]
    )
    assert n == 3 and s["dopd"]["acc_test"][2] == 2
    gaps = [(0.3 - 0.1) / 0.4, (0.4 - 0.2) / 0.4, (0.25 - 0.1) / 0.4]
    np.testing.assert_allclose(s["opd"]["gap_closed"][0], np.mean(gaps))
    assert s["opd"]["label"] == "OPD"
    table = aggregate.markdown_table(s, 3)
    assert "| OPD | 31.7 ± 7.6 |" in table and "| 3/3 |" in table and "| 2/3 |" in table
    assert "gap closed %" in table.splitlines()[0]


def test_mopd_cells_get_per_domain_columns_and_normalized_scores():
    def cell(init_a, mopd_a):
        return {
            "config": {"distill": {"teachers": {"a": "run:t_a", "b": "run:t_b"}}},
            "references": {
                "teacher": {"acc_test_a": 0.0, "acc_test_b": 0.3},  # scores no domain: not shown
                "student_init": {"acc_test_a": init_a, "acc_test_b": 1.0},
            },
            "methods": {
                "t_a": {"acc_test_a": 0.9, "acc_test_b": 0.0},
                "t_b": {"acc_test_a": 0.0, "acc_test_b": 1.0},  # no headroom on b
                "mopd": {"acc_test_a": mopd_a, "acc_test_b": 1.0, "label": "MOPD"},
            },
        }

    cells = [cell(0.1, 0.5), cell(0.1, 0.3)]
    for c in cells:  # no privileged input: the priv column would repeat test_a
        c["config"]["task"] = {"priv_form": "none"}
        c["methods"]["mopd"]["acc_priv"] = c["methods"]["mopd"]["acc_test_a"]
    s = aggregate.summarize(cells)
    assert "acc_priv" not in s["mopd"] and list(s)[0] == "student_init"
    mean, std, n = s["mopd"]["norm_mean"]
    np.testing.assert_allclose([mean, std], [0.375, np.std([0.5, 0.25], ddof=1)])
    assert "norm_b" not in s["mopd"]  # b's teacher does not beat the init
    table = aggregate.markdown_table(s, 2)
    head = table.splitlines()[0]
    assert "test_a %" in head and "test_b %" in head and "normalized mean" in head
    assert "gap closed" not in head  # no single test set: no row has it
    assert "| MOPD | 40.0 ± 14.1 | 100.0 ± 0.0 | 0.375 ± 0.177 | 0.375 ± 0.177 |" in table
    # across variants the headline is the normalized mean, not a test column it lacks
    variants = aggregate.variant_table({"": s, "lr=1": aggregate.summarize(cells[:1])})
    assert aggregate.headline_key({"": s}) == "norm_mean"
    assert "| default | - | 1.000 ± 0.000 | -0.125 ± 0.000 | 0.375 ± 0.177 |" in variants
    assert variants.splitlines()[-1].endswith("| 0.500 ± 0.000 |")


def test_paired_differences_match_numpy_seed_by_seed():
    cells = [
        _results(0.1, 0.5, {"opd": 0.30, "dopd": 0.35, "gkd": 0.2}),
        _results(0.2, 0.6, {"opd": 0.40, "dopd": 0.38}),
        _results(0.1, 0.5, {"opd": 0.25, "dopd": 0.31}),
        _results(0.1, 0.5, {"dopd": 0.9}),  # no opd: not paired
    ]
    diffs = aggregate.paired_differences(cells, "opd")
    assert list(diffs) == ["dopd", "gkd"]
    d = [0.35 - 0.30, 0.38 - 0.40, 0.31 - 0.25]
    mean, std, n = diffs["dopd"]["acc_test"]
    np.testing.assert_allclose([mean, std], [np.mean(d), np.std(d, ddof=1)])
    assert n == 3 and diffs["dopd"]["ahead"] == 2 and diffs["gkd"]["ahead"] == 0
    table = aggregate.paired_table(diffs, "OPD")
    assert "ahead of OPD (test)" in table.splitlines()[0]
    assert "| DOPD | 3.0 ± 4.4 |" in table and "| 2/3 seeds |" in table
    assert aggregate.paired_differences(cells, "nope") == {}


def test_paired_differences_use_the_normalized_mean_and_skip_domain_teachers():
    def cell(mopd_a, ft_a):
        return {
            "config": {"distill": {"teachers": {"a": "run:t_a"}}},
            "references": {"student_init": {"acc_test_a": 0.1}},
            "methods": {
                "t_a": {"acc_test_a": 0.9},
                "mopd": {"acc_test_a": mopd_a, "label": "MOPD"},
                "ft": {"acc_test_a": ft_a, "label": "FT"},
            },
        }

    cells = [cell(0.5, 0.3), cell(0.2, 0.3)]
    cells[0]["methods"]["t2_a"] = {"acc_test_a": 0.8}  # a later round's teacher
    cells[0]["config"]["distill"]["variants"] = {"mopd": {"teachers": {"a": "run:t2_a"}}}
    diffs = aggregate.paired_differences(cells, "ft")
    assert list(diffs) == ["mopd"]
    np.testing.assert_allclose(diffs["mopd"]["norm_mean"][0], np.mean([0.25, -0.125]))
    assert diffs["mopd"]["ahead"] == 1
    assert "ahead of FT (normalized mean)" in aggregate.paired_table(diffs, "FT")


def test_gap_closed_undefined_when_the_teacher_is_not_better():
    assert aggregate.gap_closed(0.3, 0.4, 0.4) is None
    assert aggregate.gap_closed(None, 0.1, 0.5) is None
    assert aggregate.gap_closed(0.3, 0.1, 0.5) == pytest.approx(0.5)
    assert aggregate.mean_std([None, float("nan")]) is None
    assert aggregate.mean_std([0.5]) == (0.5, 0.0, 1)


def test_mean_curve_uses_the_steps_every_seed_logged():
    a = [{"step": 10, "x": 1.0}, {"step": 20, "x": 3.0}, {"step": 30, "x": 5.0}]
    b = [{"step": 10, "x": 3.0}, {"step": 20, "x": 5.0}]
    steps, mean, std = aggregate.mean_curve([a, b], "x")
    np.testing.assert_array_equal(steps, [10, 20])
    np.testing.assert_allclose(mean, [2.0, 4.0])
    np.testing.assert_allclose(std, [np.sqrt(2), np.sqrt(2)])
    assert aggregate.mean_curve([a, b], "missing") is None


def test_figure_bands_stay_inside_the_metric_range():
    from dopd_jax.pipeline import figures

    mean, std = np.array([0.01, 0.5, 0.98]), np.array([0.05, 0.1, 0.05])
    lo, hi = figures.band_limits(mean, std, 100.0, top=100.0)
    np.testing.assert_allclose(lo, [0.0, 40.0, 93.0])
    np.testing.assert_allclose(hi, [6.0, 60.0, 100.0])
    lo, hi = figures.band_limits(mean, std)  # entropy: no top
    np.testing.assert_allclose(hi, [0.06, 0.6, 1.03])


def test_variants_with_commas_are_regrouped_from_the_module_list():
    known = ("mislead=0,student=small", "mislead=0.5,student=small", "")
    pieces = "mislead=0,student=small,default,mislead=0.5,student=small,mislead=0".split(",")
    assert sweep.split_variants(pieces, known) == (
        "mislead=0,student=small",
        "",
        "mislead=0.5,student=small",
        "mislead=0",
    )
    assert sweep.split_variants(["a", "b"], ()) == ("a", "b")


def test_plan_orders_cells_and_refuses_duplicates():
    cells = sweep.plan(("", "b"), (0, 1), (0,))
    assert [(c.variant, c.seed) for c in cells] == [("", 0), ("", 1), ("b", 0), ("b", 1)]
    assert cells[0].workdir("/r") == "/r/default/s0_t0"
    with pytest.raises(ValueError, match="duplicate seeds"):
        sweep.plan(("",), (0, 0), (0,))


MODULE = """
from dopd_jax.pipeline import config as config_lib

SEEDS = (0, 1)
PAIRED_AGAINST = "opd"

def get_config(arg=None):
    c = config_lib.base_config()
    config_lib.shrink_to_smoke(c)
    c.distill.methods = ("opd", "dopd")
    c.distill.steps, c.distill.eval_every, c.distill.log_every = 4, 2, 2
    if arg == "lr":
        c.distill.lr = 3e-3
    elif arg:
        raise ValueError(arg)
    return c
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    path = root / "exp.py"
    path.write_text(textwrap.dedent(MODULE))
    axes = sweep.module_axes(str(path))
    cells = sweep.plan(("", "lr"), axes["seeds"], axes["teacher_seeds"])
    logs = []
    text = sweep.run_sweep(str(path), str(root / "out"), cells, log=logs.append)
    return path, root / "out", cells, text, logs


def test_sweep_shares_stages_and_writes_tables_and_figures(swept):
    path, out, cells, text, _ = swept
    assert len(cells) == 4
    configs = [json.load(open(os.path.join(c.workdir(str(out)), "config.json"))) for c in cells]
    # one teacher for all cells (same teacher seed); the student warm-up per seed
    assert configs[0]["teacher"]["source"] == "scratch"
    assert {c["teacher"]["source"] for c in configs[1:]} == {
        "workdir:" + cells[0].workdir(str(out))
    }
    assert configs[1]["student"]["source"] == "scratch"  # seed 1: its own warm-up
    assert configs[2]["student"]["source"] == "workdir:" + cells[0].workdir(str(out))
    assert configs[2]["distill"]["lr"] == 3e-3 and configs[1]["seed"] == 1
    # the shared teacher gives identical teacher rows; seeds give different students
    res = [json.load(open(os.path.join(c.workdir(str(out)), "results.json"))) for c in cells]
    assert res[0]["references"]["teacher"] == res[1]["references"]["teacher"]
    assert res[0]["references"]["student_init"] == res[2]["references"]["student_init"]
    assert "## default" in text and "## lr" in text and "## Variants (test %)" in text
    assert "| vanilla OPD (T->S) |" in text and "| 2/2 |" in text
    assert "Paired against vanilla OPD (T->S)" in text and "| /2 seeds |" not in text
    for name in ("default_curves.png", "default_routing.png", "default_final.png", "lr_final.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert "opd" in json.load(open(out / "summary.json"))["default"]


def test_rerun_skips_finished_cells_and_reports_partial_sweeps(swept):
    path, out, cells, text, _ = swept
    logs = []
    again = sweep.run_sweep(str(path), str(out), cells, log=logs.append)
    assert again == text
    assert all("finished, skipped" in line for line in logs), logs
    more = sweep.plan(("",), (0, 1, 5), (0,))  # seed 5 not run: reported as 2/3
    partial = sweep.write_report(str(path), str(out), more)
    assert "| 2/3 |" in partial


def test_no_paired_table_when_only_the_reference_run_finished(swept, tmp_path):
    path, out, cells, _, _ = swept
    cell = cells[0]
    shutil.copytree(cell.workdir(str(out)), cell.workdir(str(tmp_path)))
    results = pathlib.Path(cell.workdir(str(tmp_path))) / "results.json"
    data = json.loads(results.read_text())
    del data["methods"]["dopd"]
    results.write_text(json.dumps(data))
    text = sweep.write_report(str(path), str(tmp_path), [cell])
    assert "| vanilla OPD (T->S) |" in text and "Paired against" not in text


def test_module_arguments_parse_and_name_what_is_wrong():
    from dopd_jax.pipeline import config as config_lib

    args, smoke = config_lib.parse_arg("mislead=0.5,smoke", mislead=("0", "0.5"))
    assert args == {"mislead": "0.5"} and smoke
    assert config_lib.parse_arg(None) == ({}, False)
    with pytest.raises(
        ValueError, match=r"unknown argument 'size=l'; valid: smoke, mislead=0\|0.5"
    ):
        config_lib.parse_arg("size=l", mislead=("0", "0.5"))
    with pytest.raises(ValueError, match=r"mislead='0.3': valid values \['0', '0.5'\]"):
        config_lib.parse_arg("mislead=0.3", mislead=("0", "0.5"))
    with pytest.raises(ValueError, match="unknown model size 'xxl'"):
        config_lib.sized("xxl")
