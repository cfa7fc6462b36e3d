"""Your own data, methods and sources end to end: JSONL, TFDS + grain, plug-in methods.

Each test runs the real CLI on smoke-size stages (no network, tiny models).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from processes import XLA_OPT

from dopd_jax.data import prepare
from dopd_jax.data.generated import tasks
from dopd_jax.trainer.metric_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMING_KEYS = {"time_rollout", "time_score", "time_update", "tokens_per_sec"}


def _cmd(config, workdir, *overrides):
    return [
        sys.executable,
        "-m",
        "dopd_jax.run",
        "--config",
        config,
        "--workdir",
        str(workdir),
        *overrides,
    ]


def _env(extra_path=None):
    env = {**os.environ, "XLA_FLAGS": XLA_OPT, "JAX_PLATFORMS": "cpu"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return env


def _run(config, workdir, *overrides, extra_path=None, timeout=600):
    return subprocess.run(
        _cmd(config, workdir, *overrides),
        cwd=ROOT,
        env=_env(extra_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _rows(n, seed, split):
    """Generated arith problems as user JSONL rows (p = the executed hints)."""
    return [
        {
            "prompt": ex.prompt,
            "privileged": ex.privileged["exec_hints"].strip(),
            "response": ex.response.strip(),
            "answer": ex.answer,
        }
        for ex in tasks.generate("arith", n, seed, split=split, misleading_fraction=0.2)
    ]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def jsonl_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("jsonl")
    return _write(d / "train.jsonl", _rows(300, 0, "train")), _write(
        d / "test.jsonl", _rows(24, 1, "test")
    )


def _jsonl_args(train, test, *more):
    return (f"--config.task.train_path={train}", f"--config.task.test_path={test}", *more)


def test_jsonl_experiment_runs_end_to_end(jsonl_files, tmp_path):
    proc = _run("experiments/jsonl_task.py:smoke", tmp_path, *_jsonl_args(*jsonl_files))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test%" in proc.stdout and "vanilla OPD (T->S)" in proc.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["methods"]) == {"opd", "dopd"}
    assert 0.0 <= results["methods"]["dopd"]["acc_test"] <= 1.0
    assert 0.0 <= results["methods"]["dopd"]["avg4_test"] <= 1.0  # sampled avg@4
    assert "test@4%" in proc.stdout
    assert (tmp_path / "data" / "jsonl_task").is_dir()  # read back through TFDS + grain
    assert read_metrics(str(tmp_path), "distill/dopd")[-1]["frac_HS"] >= 0.0


def test_malformed_jsonl_row_is_named_before_training(jsonl_files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q: 1+1=?", "answer": "2"}\n{"prompt": 3}\n')
    proc = _run(
        "experiments/jsonl_task.py:smoke",
        tmp_path / "w",
        *_jsonl_args(str(bad), jsonl_files[1]),
        timeout=120,
    )
    assert proc.returncode != 0
    assert "bad.jsonl" in proc.stderr and "line 2" in proc.stderr
    assert not (tmp_path / "w" / "teacher").exists()


@pytest.mark.parametrize("drop,message", [("privileged", "privileged"), ("response", "response")])
def test_missing_field_a_method_or_stage_needs_is_named(tmp_path, drop, message):
    rows = [{k: v for k, v in r.items() if k != drop} for r in _rows(40, 0, "train")]
    train = _write(tmp_path / "train.jsonl", rows)
    test = _write(tmp_path / "test.jsonl", _rows(8, 1, "test"))
    proc = _run(
        "experiments/jsonl_task.py:smoke", tmp_path / "w", *_jsonl_args(train, test), timeout=120
    )
    assert proc.returncode != 0
    assert message in proc.stderr and "error:" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "w" / "teacher").exists()


PLUGIN = '''
"""A method outside dopd_jax: forward KL to the plain teacher (one file)."""
import dataclasses

from dopd_jax import losses
from dopd_jax.methods import Method, Pass


@dataclasses.dataclass(frozen=True)
class FKLConfig:
    beta: float = 0.5


def _loss(student_BTV, targets, ro, cfg, *, chunk_size=None, refs=None):
    return losses.divergence_loss(student_BTV, targets["teacher"], ro.tokens_BT, ro.mask_BT,
                                  kind="fkl", beta=cfg.beta, chunk_size=chunk_size)


FKL = Method(name="fkl_opd", label="FKL OPD (plug-in)", config_cls=FKLConfig,
             passes=lambda cfg: {"teacher": Pass("teacher", "x")}, loss=_loss,
             main_target="teacher")
'''


def test_plugin_method_from_outside_the_package_runs_through_the_runner(tmp_path):
    (tmp_path / "my_methods.py").write_text(PLUGIN)
    proc = _run(
        "experiments/privilege_illusion.py:smoke",
        tmp_path / "w",
        "--config.distill.methods=('my_methods:FKL',)",
        extra_path=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FKL OPD (plug-in)" in proc.stdout
    rows = read_metrics(str(tmp_path / "w"), "distill/my_methods:FKL")
    assert rows and {"loss", "kl_to_teacher", "student_entropy"} <= set(rows[-1])


def test_workdir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("not a directory")
    proc = _run("experiments/privilege_illusion.py:smoke", target, timeout=120)
    assert proc.returncode != 0
    assert "is not a directory" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- TFDS + grain, exact resume

TFDS_ARGS = (
    "--config.task.source=tfds",
    "--config.task.verifier=marker",
    "--config.tokenizer.hard_vocab_limit=False",
    "--config.distill.methods=('opd',)",
    "--config.distill.steps=8",
    "--config.distill.checkpoint_every=2",
)


@pytest.fixture(scope="module")
def tfds_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    prepare.prepare(
        [
            "--source",
            "arith",
            "--name",
            "arith_small",
            "--data_dir",
            str(root / "data"),
            "--n_train",
            "400",
            "--n_test",
            "32",
            "--misleading_fraction",
            "0.2",
        ]
    )
    args = (*TFDS_ARGS, f"--config.task.data_dir={root / 'data'}", "--config.task.name=arith_small")
    proc = _run("experiments/privilege_illusion.py:smoke", root / "ref", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, args


def _records(workdir):
    return {
        (r["run"], r["step"]): {k: v for k, v in r.items() if k not in TIMING_KEYS}
        for r in read_metrics(str(workdir))
    }


def test_prepared_tfds_dataset_feeds_the_runner(tfds_run):
    root, _ = tfds_run
    results = json.loads((root / "ref" / "results.json").read_text())
    assert {"acc_test", "acc_hard", "acc_priv"} <= set(results["methods"]["opd"])
    meta = root / "ref" / "ckpt" / "distill" / "opd" / "8" / "meta"
    saved = [p.read_text(errors="ignore") for p in meta.rglob("*") if p.is_file()]
    assert any('"grain"' in text for text in saved)  # the iterator state is checkpointed


def test_tfds_run_killed_mid_distillation_resumes_exactly(tfds_run):
    root, args = tfds_run
    workdir = root / "killed"
    proc = subprocess.Popen(
        _cmd("experiments/privilege_illusion.py:smoke", workdir, *args),
        cwd=ROOT,
        env=_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    ckpt = workdir / "ckpt" / "distill" / "opd"
    while not any(
        p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists()
        for p in (ckpt.glob("*") if ckpt.exists() else ())
    ):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    again = _run("experiments/privilege_illusion.py:smoke", workdir, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming distill/opd after step" in again.stdout
    assert _records(workdir) == _records(root / "ref")
    got, want = (
        json.loads((w / "results.json").read_text())["methods"]["opd"]
        for w in (workdir, root / "ref")
    )
    got.pop("wall_time_s"), want.pop("wall_time_s")
    assert got == want
