"""The method family through the runner: the MOPD pipeline module (RL teachers,
MOPD, its four baselines, the normalized-score table) with exact resume, and
GKD and MOPD micro-batched and sharded over 8 simulated devices. (The DOPD
guardrails and OPD pruning run through the runner in test_experiment_modules.)"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from processes import XLA_OPT

from dopd_jax.trainer.metric_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
EIGHT = ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")
FAMILY = """
from dopd_jax.pipeline import config as config_lib

def get_config(arg=None):
    _, models = arg.split(",")
    c = config_lib.base_config()
    config_lib.shrink_to_smoke(c)
    # the MOPD smoke's SFT stages (same tokenizer and model shapes): nothing SFT-trained here
    c.teacher.source = c.student.source = "workdir:" + models
    c.task.domain = "arith,sort"
    c.task.max_prompt_len, c.task.max_priv_len = 24, 64
    c.distill.steps = 3
    c.distill.methods = ("gkd", "mopd")
    c.distill.teachers = {"arith": "teacher", "sort": "teacher"}
    return c
"""


def _run(workdir, config, *overrides, timeout=900, devices=1):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {XLA_OPT}"}
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "dopd_jax.run", "--config", config, "--workdir", str(workdir)]
    proc = subprocess.run(
        cmd + list(overrides), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def mopd_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mopd")
    overrides = ("--config.distill.checkpoint_every=1",)
    proc = _run(workdir, "experiments/mopd_domains.py:smoke", *overrides)
    return workdir, proc, overrides


def test_mopd_pipeline_runs_every_baseline_and_prints_normalized_scores(mopd_run):
    workdir, proc, _ = mopd_run
    results = json.loads((workdir / "results.json").read_text())
    runs = results["methods"]
    assert {
        "sft_arith",
        "sft_sort",
        "mopd",
        "mopd_topk",
        "mix_rl",
        "cascade_arith",
        "cascade_sort",
        "offpolicy_ft",
        "merge_avg",
        "merge_ta",
    } <= set(runs)
    assert set(results["normalized"]["mopd"]) == {"arith", "sort", "mean"}
    assert "normalized score" in proc.stdout and "Param-Merge (TA)" in proc.stdout
    mopd = read_metrics(str(workdir), "distill/mopd")
    for key in ("kl_to_teacher/arith", "kl_to_teacher/sort", "reward/arith", "response_len/sort"):
        assert key in mopd[-1], key
    grpo = read_metrics(str(workdir), "distill/mix_rl")
    assert "adv_mean" in grpo[-1] and "reward" in grpo[-1]
    assert (workdir / "runs" / "sft_arith" / "params").exists()  # a teacher of later runs
    assert not (workdir / "runs" / "mix_rl" / "params").exists()  # nothing reads it
    assert read_metrics(str(workdir), "distill/offpolicy_ft")[-1]["on_policy_frac"] == 0.0


def test_multi_round_mopd_runs_from_the_round_one_student(mopd_run, tmp_path):
    models = mopd_run[0]  # same task, tokenizer and model shapes: reuse its SFT stages
    sources = (
        f"--config.teacher.source=workdir:{models}",
        f"--config.student.source=workdir:{models}",
    )
    _run(tmp_path, "experiments/mopd_forms.py:rounds=2,smoke", *sources)
    runs = json.loads((tmp_path / "results.json").read_text())["methods"]
    assert {"rl_arith", "rl_sort", "mopd_pg", "rl2_arith", "rl2_sort", "mopd_pg_r2"} <= set(runs)
    assert runs["mopd_pg_more"]["label"] == "MOPD pg, round 2, round-1 teachers"
    assert runs["mopd_pg_r2"].get("label") == "MOPD pg, round 2"
    for kept in ("mopd_pg", "rl2_arith", "rl2_sort"):  # read by later runs
        assert (tmp_path / "runs" / kept / "params").exists(), kept
    second = read_metrics(str(tmp_path), "distill/mopd_pg_r2")
    assert "kl_to_teacher/arith" in second[-1] and "kl_to_teacher/sort" in second[-1]


def test_mopd_and_gkd_resume_exactly_from_a_mid_run_checkpoint(mopd_run, tmp_path):
    workdir, _, overrides = mopd_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    before = {r: read_metrics(str(workdir), f"distill/{r}") for r in ("mopd", "offpolicy_ft")}
    last = {}
    for run in before:  # as if killed after the next-to-last step's checkpoint
        (copy / "runs" / run / "result.json").unlink()
        ckpt = copy / "ckpt" / "distill" / run
        last[run] = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
        shutil.rmtree(ckpt / str(last[run]))
    proc = _run(copy, "experiments/mopd_domains.py:smoke", *overrides)
    for run, rows in before.items():
        assert f"resuming distill/{run} after step {last[run] - 1}" in proc.stdout + proc.stderr
        after = read_metrics(str(copy), f"distill/{run}")
        assert [r["step"] for r in after] == [r["step"] for r in rows]
        for a, b in zip(rows, after):
            for k in ("loss", "kl_to_teacher", "response_len", "grad_norm"):
                assert a[k] == b[k], (run, k, a[k], b[k])
    old = json.loads((workdir / "results.json").read_text())["methods"]
    new = json.loads((copy / "results.json").read_text())["methods"]
    assert old["mopd"]["acc_test_arith"] == new["mopd"]["acc_test_arith"]


def test_gkd_and_mopd_micro_batched_on_a_2x2x2_mesh(mopd_run, tmp_path):
    config = tmp_path / "family.py"
    config.write_text(FAMILY)
    overrides = (*EIGHT, "--config.distill.num_microbatches=2")
    _run(tmp_path / "w", f"{config}:sharded,{mopd_run[0]}", *overrides, devices=8)
    gkd = read_metrics(str(tmp_path / "w"), "distill/gkd")
    assert {r["on_policy_frac"] for r in gkd} <= {0.0, 1.0}
    mopd = read_metrics(str(tmp_path / "w"), "distill/mopd")
    assert {"kl_to_teacher/arith", "kl_to_teacher/sort", "num_tokens/sort"} <= set(mopd[-1])
    n = mopd[-1]["num_tokens/arith"] + mopd[-1]["num_tokens/sort"]
    assert n == pytest.approx(mopd[-1]["num_tokens"])
