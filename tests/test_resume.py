"""Training-state checkpoints: the manager on a tiny state, the loop hooks, and
kill / SIGTERM / damage / incompatible-config resumes of the smoke experiment.

The end-to-end runs share a JAX persistent compilation cache so restarts do
not recompile; the uninterrupted reference compiles cold, so its equality
with the resumed runs also shows the cache does not change numerics.
"""

import glob
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from processes import XLA_OPT

from dopd_jax import steps as steps_lib
from dopd_jax.trainer import checkpoints as train_checkpoint
from dopd_jax.trainer import loop as train
from dopd_jax.trainer.checkpoints import StageCheckpointer
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


# ---------------------------------------------------------------- the manager


def _state(scale=1.0, d=4):
    # w is large enough for orbax to store it out of line (small arrays sit in the index)
    params = {
        "w": jnp.arange(d * 512, dtype=jnp.float32).reshape(d, 512) * scale,
        "b": jnp.ones((3,), jnp.bfloat16) * scale,
    }
    return steps_lib.init_state(params, optax.adam(1e-3), keep_ref=True)


def _saved(tmp_path, steps=(1, 2, 3), keep=2, config=None):
    directory = str(tmp_path / "ck")
    with StageCheckpointer(directory, config or {"lr": 1.0}, keep=keep) as ck:
        for s in steps:
            ck.save(s, _state(s), jax.random.key(s), {"stream": {"next_batch": s}})
    return directory


def _tree_bytes(directory):
    return {
        p: pathlib.Path(p).read_bytes()
        for p in sorted(glob.glob(f"{directory}/**", recursive=True))
        if os.path.isfile(p)
    }


def test_roundtrip_restores_latest_exactly_and_keeps_n(tmp_path):
    directory = _saved(tmp_path)
    assert sorted(os.listdir(directory)) == ["2", "3"]
    with StageCheckpointer(directory, {"lr": 1.0}) as ck:
        r = ck.restore(_state(0.0), jax.random.key(0))
    assert r.step == 3 and r.extra == {"stream": {"next_batch": 3}}
    want = _state(3)
    assert jax.tree.structure(r.state) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(r.state), jax.tree.leaves(want)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(jax.random.key_data(r.key), jax.random.key_data(jax.random.key(3)))


def test_empty_directory_restores_nothing(tmp_path):
    with StageCheckpointer(str(tmp_path / "none"), {}) as ck:
        assert ck.restore(_state(), None) is None


def _flip_array_bit(step_dir):
    f = max(glob.glob(f"{step_dir}/state/ocdbt.process_0/d/*"), key=os.path.getsize)
    data = bytearray(pathlib.Path(f).read_bytes())
    data[len(data) // 2] ^= 0x04  # orbax itself restores this silently
    pathlib.Path(f).write_bytes(bytes(data))


def _truncate_arrays(step_dir):
    for f in glob.glob(f"{step_dir}/state/ocdbt.process_0/d/*"):
        data = pathlib.Path(f).read_bytes()
        pathlib.Path(f).write_bytes(data[: len(data) // 3])


DAMAGES = {
    "bit_flip": _flip_array_bit,
    "truncated": _truncate_arrays,
    "no_commit_marker": lambda d: os.remove(f"{d}/{train_checkpoint.COMMIT_MARKER}"),
    "garbled_meta": lambda d: pathlib.Path(f"{d}/meta/metadata").write_text('{"payload": {'),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_is_set_aside_and_previous_used(tmp_path, damage):
    directory = _saved(tmp_path)
    DAMAGES[damage](f"{directory}/3")
    logs = []
    with StageCheckpointer(directory, {"lr": 1.0}, log=logs.append) as ck:
        r = ck.restore(_state(0.0), jax.random.key(0))
    assert r.step == 2
    assert np.array_equal(np.asarray(r.state.params["w"]), np.asarray(_state(2).params["w"]))
    assert any(f"{directory}/3 is damaged" in m for m in logs), logs
    if damage == "bit_flip":  # orbax reads the flipped data without complaint
        assert "checksums differ" in logs[0]
    assert sorted(os.listdir(directory)) == ["2", "3.corrupt"]


def test_incompatible_config_names_field_and_keeps_files(tmp_path):
    directory = _saved(tmp_path, config={"distill": {"lr": 1.0, "batch_prompts": 4}})
    before = _tree_bytes(directory)
    with pytest.raises(ValueError, match=r"distill\.batch_prompts: 4 in the checkpoint, 8 now"):
        StageCheckpointer(directory, {"distill": {"lr": 1.0, "batch_prompts": 8}})
    assert _tree_bytes(directory) == before


def test_other_shapes_name_the_leaf_and_keep_files(tmp_path):
    directory = _saved(tmp_path)
    before = _tree_bytes(directory)
    with StageCheckpointer(directory, {"lr": 1.0}) as ck:
        with pytest.raises(ValueError, match=r"\['w'\].*\[4, 512\].*\[5, 512\]"):
            ck.restore(_state(d=5), jax.random.key(0))
    assert _tree_bytes(directory) == before


def test_fingerprint_sees_any_single_bit_and_every_dtype():
    tree = {
        "f": jnp.linspace(-1, 1, 64),
        "h": jnp.ones(5, jnp.bfloat16),
        "i": jnp.arange(7, dtype=jnp.int32),
        "m": jnp.array([True, False]),
    }
    base = train_checkpoint.fingerprint(tree)
    for bit in (0, 13, 31):
        words = np.asarray(tree["f"]).view(np.uint32).copy()
        words[17] ^= np.uint32(1 << bit)
        flipped = dict(tree, f=jnp.asarray(words.view(np.float32)))
        assert train_checkpoint.fingerprint(flipped) != base
    swapped = dict(tree, i=tree["i"][::-1])
    assert train_checkpoint.fingerprint(swapped) != base


def test_drop_metrics_after_keeps_other_runs_and_drops_torn_line(tmp_path):
    rows = [{"run": "a", "step": s} for s in (2, 4, 6)] + [{"run": "b", "step": 8}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"run": "a", "st'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert train_checkpoint.drop_metrics_after(str(tmp_path), "a", 4, log=lambda m: None) == 2
    assert [(r["run"], r["step"]) for r in read_metrics(str(tmp_path))] == [
        ("a", 2),
        ("a", 4),
        ("b", 8),
    ]


# ---------------------------------------------------------------- the loop hooks


def _count_fn(state, batch):
    """A stand-in SFT step: advances the step counter."""
    state = steps_lib.TrainState(state.params, state.opt_state, state.ref_params, state.step + 1)
    return state, {"loss": batch.inputs_BL.sum()}


def _batches():
    while True:
        yield steps_lib.SFTBatch(
            np.ones((1, 2), np.int32),
            np.ones((1, 2), np.int32),
            np.ones((1, 2), bool),
            np.ones((1, 2), bool),
        )


def test_run_sft_checkpoints_every_n_and_at_end_after_flushing_metrics():
    events = []
    hooks = train.LoopHooks(
        write=lambda s, m: events.append(("log", s)),
        checkpoint=lambda s, st: events.append(("ckpt", s, int(st.step))),
        checkpoint_every=3,
        log_every=2,
    )
    state = steps_lib.TrainState({}, (), None, jnp.int32(1))
    state = train.run_sft(_count_fn, state, _batches(), 7, hooks, start_step=1)
    assert int(state.step) == 7
    assert events == [
        ("log", 2),
        ("ckpt", 3, 3),
        ("log", 4),
        ("log", 6),
        ("ckpt", 6, 6),
        ("log", 7),
        ("ckpt", 7, 7),
    ]


def test_sigterm_finishes_step_checkpoints_and_raises_interrupted():
    saved, warned = [], []
    previous = signal.getsignal(signal.SIGTERM)
    with train.sigterm_flag() as stop:

        def step_fn(state, batch):
            if int(state.step) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return _count_fn(state, batch)

        hooks = train.LoopHooks(
            checkpoint=lambda s, st: saved.append(s),
            checkpoint_every=100,
            stop_requested=stop,
            warn=warned.append,
        )
        state = steps_lib.TrainState({}, (), None, jnp.int32(0))
        with pytest.raises(train.Interrupted) as info:
            train.run_sft(step_fn, state, _batches(), 10, hooks)
    assert saved == [3] and info.value.step == 3 and info.value.code == 128 + signal.SIGTERM
    assert "SIGTERM" in warned[0]
    assert signal.getsignal(signal.SIGTERM) is previous


# ---------------------------------------------------------------- the smoke experiment


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
    _flip_array_bit(workdir / "ckpt/teacher/20")
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
    before = _tree_bytes(workdir / "ckpt")
    namespace = {}
    exec(CONFIG, namespace)
    cfg = namespace["get_config"]()
    cfg.distill.batch_prompts = 16
    with pytest.raises(ValueError, match=r"distill\.batch_prompts: 8 in the checkpoint, 16 now"):
        experiment.run_experiment(cfg, str(workdir), log=lambda m: None)
    assert _tree_bytes(workdir / "ckpt") == before


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
