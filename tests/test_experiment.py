"""The smoke experiment end to end through the CLI, resume, and bad-input errors."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest
from processes import XLA_OPT

from dopd_jax.pipeline import config as config_lib
from dopd_jax.pipeline import config_checks as validation
from dopd_jax.trainer.metric_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "experiments/privilege_illusion.py:smoke"
# methods.md section 9 (per step) and section 4 (DOPD collapse diagnostics).
STEP_KEYS = {
    "loss",
    "student_entropy",
    "target_entropy",
    "kl_to_teacher",
    "kl_to_priv_teacher",
    "student_topk_mass",
    "target_topk_mass",
    "topk_overlap",
    "response_len",
    "truncated_frac",
    "reward",
    "time_rollout",
    "time_score",
    "time_update",
    "tokens_per_sec",
}
RUNS = ("opd", "privt", "opsd", "dopd", "dopd_frozen")
DOPD_KEYS = {
    "frac_LH",
    "frac_LL",
    "frac_HT",
    "frac_HS",
    "loss_LH",
    "loss_HT",
    "gap_HS",
    "A_bar",
    "qS_bar",
    "qT_bar",
}


def _run(workdir, *overrides, timeout=600, env=None):
    env = {**os.environ, "XLA_FLAGS": XLA_OPT, "JAX_PLATFORMS": "cpu", **(env or {})}
    cmd = [
        sys.executable,
        "-m",
        "dopd_jax.run",
        "--config",
        SMOKE,
        "--workdir",
        str(workdir),
        *overrides,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    proc = _run(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def test_smoke_prints_table_with_every_method(smoke_run):
    _, proc = smoke_run
    for label in (
        "vanilla OPD (T->S)",
        "Priv.T->S",
        "OPSD",
        "DOPD",
        "DOPD priv_student=frozen",
        "teacher",
        "student_init",
    ):
        assert label in proc.stdout + proc.stderr, label


def test_smoke_writes_results_and_metrics(smoke_run):
    workdir, _ = smoke_run
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["methods"]) == set(RUNS)
    for r in results["methods"].values():
        assert 0.0 <= r["acc_test"] <= 1.0 and 0.0 <= r["acc_hard"] <= 1.0
        assert r["wall_time_s"] > 0
    # The frozen privileged student the routing used is evaluated too (not the live one).
    assert "acc_ref_priv" in results["methods"]["dopd_frozen"]
    assert "acc_ref_priv" not in results["methods"]["dopd"]
    for method in RUNS:
        rows = read_metrics(str(workdir), f"distill/{method}")
        assert len(rows) == 2  # steps 2 and 4 of the smoke config
        missing = STEP_KEYS - set(rows[-1])
        assert not missing, (method, missing)
        assert "eval_acc" in rows[-1] and "eval_priv_acc" in rows[-1]
        assert ("eval_ref_priv_acc" in rows[-1]) == (method in ("opsd", "dopd_frozen"))
    dopd = read_metrics(str(workdir), "distill/dopd")[-1]
    assert not DOPD_KEYS - set(dopd)
    fracs = sum(dopd[f"frac_{r}"] for r in ("LH", "LL", "HT", "HS"))
    assert abs(fracs - 1.0) < 1e-5
    assert (workdir / "tb").is_dir() and any((workdir / "tb").iterdir())
    stages = {"context", "sft/teacher", "sft/student_init", "eval/references"}
    stages |= {f"distill/{m}/{part}" for m in RUNS for part in ("train", "eval")}
    assert set(results["wall_times_s"]) == stages
    assert all(t > 0 for t in results["wall_times_s"].values())
    assert "stage wall times (s): context" in smoke_run[1].stdout + smoke_run[1].stderr


def test_restart_resumes_without_retraining(smoke_run):
    workdir, _ = smoke_run
    before = (workdir / "metrics.jsonl").read_text()
    results_before = json.loads((workdir / "results.json").read_text())
    proc = _run(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (workdir / "metrics.jsonl").read_text() == before  # nothing retrained
    results_after = json.loads((workdir / "results.json").read_text())
    assert results_after["methods"] == results_before["methods"]
    # Restored stages keep the time of the process that did their work.
    trained = {k: v for k, v in results_before["wall_times_s"].items() if k != "context"}
    assert {k: results_after["wall_times_s"][k] for k in trained} == trained


def test_changed_stage_config_is_refused(smoke_run):
    workdir, _ = smoke_run
    proc = _run(workdir, "--config.teacher.steps=21")
    assert proc.returncode != 0
    assert "different config" in proc.stderr and "teacher" in proc.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.distill.stpes=3", "stpes"),
        ("--config.distill.temperature=0", "config.distill.temperature"),
        ("--config.method_args.dopd.top_k=0", "config.method_args.dopd"),
        ("--config.task.source=csv", "unknown source 'csv'"),
        ("--config.task.verifier=nope", "unknown verifier 'nope'"),
        ("--config.distill.methods=('opd','no_such.module:M')", "cannot import module"),
        ("--config.distill.methods=('opd','dopd2')", "unknown method 'dopd2'"),
    ],
)
def test_cli_rejects_bad_config_before_compiling(tmp_path, override, message):
    proc = _run(tmp_path, override, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "teacher").exists()


def _smoke_config():
    c = config_lib.base_config()
    config_lib.shrink_to_smoke(c)
    return c


def test_privileged_methods_need_privileged_context():
    c = _smoke_config()
    c.task.priv_form = "none"
    with pytest.raises(ValueError, match="need privileged context"):
        validation.validate(c)
    c.distill.methods = ("opd",)
    validation.validate(c)  # vanilla OPD needs no privilege


def test_prompt_longer_than_maximum_fails_before_training(tmp_path):
    from dopd_jax.pipeline import context as stages

    c = _smoke_config()
    c.task.max_prompt_len = 6
    with pytest.raises(ValueError, match="max_prompt_len"):
        stages.build_context(validation.validate(c), str(tmp_path), print)
    assert not (tmp_path / "teacher").exists()


def test_vocab_mismatch_is_named():
    from dopd_jax.models import ModelConfig
    from dopd_jax.pipeline.distill_stage import check_vocab

    a = ModelConfig(
        vocab_size=64, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=16
    )
    b = ModelConfig(
        vocab_size=72, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=16
    )
    with pytest.raises(ValueError, match="teacher vocabulary 64 != student vocabulary 72"):
        check_vocab(a, b)
    # Padded embeddings may differ; the ids the logits cover must not.
    check_vocab(
        dataclasses.replace(a, valid_vocab_size=60), dataclasses.replace(b, valid_vocab_size=60)
    )


def test_same_experiment_on_a_2x2x2_mesh_matches_one_device(smoke_run, tmp_path):
    workdir, _ = smoke_run
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count=8 {XLA_OPT}"}
    proc = _run(
        tmp_path,
        "--config.distill.methods=('dopd',)",
        "--config.mesh.data=2",
        "--config.mesh.fsdp=2",
        "--config.mesh.tensor=2",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = read_metrics(str(workdir), "distill/dopd")
    eight = read_metrics(str(tmp_path), "distill/dopd")
    for a, b in zip(one, eight):
        for k in ("loss", "A_bar", "frac_HS", "kl_to_teacher", "student_entropy"):
            assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(a[k])), (k, a[k], b[k])


def test_mesh_that_does_not_fit_is_refused(tmp_path):
    proc = _run(tmp_path, "--config.mesh.data=3", timeout=120)
    assert proc.returncode != 0
    assert "config.mesh" in proc.stderr and "does not match" in proc.stderr


def test_models_restored_from_a_previous_workdir(smoke_run, tmp_path):
    workdir, _ = smoke_run
    proc = _run(
        tmp_path,
        f"--config.teacher.source=workdir:{workdir}",
        f"--config.student.source=workdir:{workdir}",
        "--config.distill.methods=('opd',)",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "ckpt" / "teacher").exists()  # nothing SFT-trained here
    refs = [json.loads((w / "references.json").read_text()) for w in (workdir, tmp_path)]
    assert refs[0] == refs[1]
    bad = _run(tmp_path / "b", "--config.teacher.source=workdir:/no/such/run", timeout=120)
    assert bad.returncode != 0 and "not a finished experiment workdir" in bad.stderr
