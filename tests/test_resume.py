"""Training-state checkpoints: the manager on a tiny state and the loop hooks
(checkpoint cadence, SIGTERM). The kill / SIGTERM / damage / incompatible-config
resumes of the smoke experiment are in test_resume_e2e.py.
"""

import json
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from checkpoint_files import flip_array_bit, tree_bytes, truncate_arrays

from dopd_jax import steps as steps_lib
from dopd_jax.trainer import checkpoints as train_checkpoint
from dopd_jax.trainer import loop as train
from dopd_jax.trainer.checkpoints import StageCheckpointer
from dopd_jax.trainer.metric_writer import read_metrics

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


DAMAGES = {
    "bit_flip": flip_array_bit,
    "truncated": truncate_arrays,
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
    before = tree_bytes(directory)
    with pytest.raises(ValueError, match=r"distill\.batch_prompts: 4 in the checkpoint, 8 now"):
        StageCheckpointer(directory, {"distill": {"lr": 1.0, "batch_prompts": 8}})
    assert tree_bytes(directory) == before


def test_other_shapes_name_the_leaf_and_keep_files(tmp_path):
    directory = _saved(tmp_path)
    before = tree_bytes(directory)
    with StageCheckpointer(directory, {"lr": 1.0}) as ck:
        with pytest.raises(ValueError, match=r"\['w'\].*\[4, 512\].*\[5, 512\]"):
            ck.restore(_state(d=5), jax.random.key(0))
    assert tree_bytes(directory) == before


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
