"""Kill / SIGTERM / damage / incompatible-config resumes of the smoke experiment,
run as subprocesses (the checkpoint manager itself: test_resume.py).

The end-to-end runs share a JAX persistent compilation cache so restarts do
not recompile; the uninterrupted reference compiles cold, so its equality
with the resumed runs also shows the cache does not change numerics.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from checkpoint_files import flip_array_bit, tree_bytes
from processes import XLA_OPT

from dopd_jax.trainer import checkpoints as train_checkpoint
from dopd_jax.trainer.metric_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMING_KEYS = {"time_rollout", "time_score", "time_update", "tokens_per_sec"}
CONFIG = """
from dopd_jax.pipeline import config as config_lib

def get_config(arg=None):
    c = config_lib.base_config()
    config_lib.shrink_to_smoke(c)
    c.teacher.checkpoint_every = c.student.checkpoint_every = c.distill.checkpoint_every = 2
    c.distill.steps, c.distill.methods = 8, ("dopd",)
    return c
"""


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    (root / "resume_cfg.py").write_text(CONFIG)
    env = dict(
        os.environ,
        XLA_FLAGS=XLA_OPT,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    ref = root / "reference"
    proc = _run(root, env, ref)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, env, ref


def _cmd(root, workdir, *overrides):
    return [
        sys.executable,
        "-m",
        "dopd_jax.run",
        "--config",
        str(root / "resume_cfg.py"),
        "--workdir",
        str(workdir),
        *overrides,
    ]


def _run(root, env, workdir, *overrides):
    return subprocess.run(
        _cmd(root, workdir, *overrides),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _committed_steps(stage_dir):
    return sorted(
        int(p.name)
        for p in pathlib.Path(stage_dir).glob("*")
        if p.name.isdigit() and (p / train_checkpoint.COMMIT_MARKER).exists()
    )


def _start_and_signal(root, env, workdir, sig):
    """Starts a run and sends ``sig`` once distill/dopd has a checkpoint at step >= 2."""
    proc = subprocess.Popen(
        _cmd(root, workdir),
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not _committed_steps(workdir / "ckpt/distill/dopd") and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _records(workdir):
    rows = read_metrics(str(workdir))
    keys = [(r["run"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicated metric records"
    return {k: {m: v for m, v in r.items() if m not in TIMING_KEYS} for k, r in zip(keys, rows)}


def _arrays(path):
    return jax.tree.leaves(ocp.StandardCheckpointer().restore(os.path.abspath(path)))


def _assert_same_arrays(a, b):
    leaves_a, leaves_b = _arrays(a), _arrays(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def _assert_same_outcome(workdir, ref):
    assert _records(workdir) == _records(ref)
    _assert_same_arrays(workdir / "ckpt/distill/dopd/8/state", ref / "ckpt/distill/dopd/8/state")
    got, want = (
        json.loads((w / "results.json").read_text())["methods"]["dopd"] for w in (workdir, ref)
    )
    got.pop("wall_time_s"), want.pop("wall_time_s")
    assert got == want


def test_sigkill_mid_distillation_resumes_identically(e2e):
    root, env, ref = e2e
    workdir = root / "killed"
    code, _, _ = _start_and_signal(root, env, workdir, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (workdir / "results.json").exists()
    proc = _run(root, env, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming distill/dopd after step" in proc.stdout
    _assert_same_outcome(workdir, ref)


def test_sigterm_saves_final_checkpoint_exits_and_resumes(e2e):
    root, env, ref = e2e
    workdir = root / "terminated"
    code, out, _ = _start_and_signal(root, env, workdir, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    stopped = int(out.split("SIGTERM: stopped after step ")[1].split()[0])
    assert stopped < 8 and stopped in _committed_steps(workdir / "ckpt/distill/dopd")
    proc = _run(root, env, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming distill/dopd after step {stopped}" in proc.stdout
    _assert_same_outcome(workdir, ref)


def test_damaged_teacher_checkpoint_falls_back_and_sft_resumes_identically(e2e):
    root, env, ref = e2e
    workdir = root / "damaged"
    shutil.copytree(ref, workdir)
    shutil.rmtree(workdir / "teacher")  # the stage output: the teacher stage reruns
    assert _committed_steps(workdir / "ckpt/teacher") == [18, 20]
    flip_array_bit(workdir / "ckpt/teacher/20")
    proc = _run(root, env, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checkpoint {workdir}/ckpt/teacher/20 is damaged" in proc.stdout
    assert "resuming teacher_sft after step 18" in proc.stdout
    assert (workdir / "ckpt/teacher/20.corrupt").is_dir()
    _assert_same_arrays(workdir / "teacher", ref / "teacher")
    assert _records(workdir) == _records(ref)


def test_incompatible_distill_config_is_refused_before_compiling(e2e):
    from dopd_jax.pipeline import runner as experiment

    root, _, ref = e2e
    workdir = root / "incompatible"
    shutil.copytree(ref, workdir)
    before = tree_bytes(workdir / "ckpt")
    namespace = {}
    exec(CONFIG, namespace)
    cfg = namespace["get_config"]()
    cfg.distill.batch_prompts = 16
    with pytest.raises(ValueError, match=r"distill\.batch_prompts: 8 in the checkpoint, 16 now"):
        experiment.run_experiment(cfg, str(workdir), log=lambda m: None)
    assert tree_bytes(workdir / "ckpt") == before


def test_relabelled_run_is_reused_and_takes_the_new_label(e2e):
    from dopd_jax.pipeline import runner as experiment

    root, _, ref = e2e
    workdir = root / "relabelled"
    shutil.copytree(ref, workdir)
    (workdir / "results.json").unlink()
    saved = workdir / "runs/dopd/result.json"
    result = json.loads(saved.read_text())
    label = result["label"]
    result["label"] = result["run_spec"]["label"] = "an older label"
    saved.write_text(json.dumps(result))
    before = _records(workdir)
    namespace = {}
    exec(CONFIG, namespace)
    out = experiment.run_experiment(namespace["get_config"](), str(workdir), log=lambda m: None)
    assert _records(workdir) == before  # nothing trained again
    assert out["methods"]["dopd"]["label"] == label
