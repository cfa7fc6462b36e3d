"""Training-state checkpoints of a running stage, and resuming from them.

A stage (teacher SFT, student warm-up, one distillation run) checkpoints into
``WORKDIR/ckpt/<stage>/<step>/`` with an orbax ``CheckpointManager`` (async
saves, the latest ``keep`` kept). Each step directory holds two items:

  state  the student ``TrainState`` (params, optimizer state, reference
         params, step) and the RNG key as key data (``jax.random.key_data``);
  meta   JSON: the step, the stage config, per-leaf checksums and shapes of
         ``state``, and the caller's ``extra`` (data-stream state, metric
         history, monitor state), sealed with a SHA-256 of its content.

The frozen teacher is never saved here: it is the output of its own stage.

Resuming walks back from the latest step. A step without orbax's commit
marker, with unreadable or mismatching meta, unreadable arrays or a checksum
mismatch (orbax does not detect flipped bits in array data) is damaged: it is
renamed to ``<step>.corrupt`` with a warning and the previous one is tried.
A checkpoint written under an incompatible config or for other shapes raises
``ValueError`` naming the difference, and nothing is moved. The temporary
directory of a save the previous process did not finish is reported and
discarded (orbax never treats it as a checkpoint).

Metrics: the loops write a step's record before its checkpoint, so a killed
run may have logged steps after its last checkpoint. ``resume`` drops those
records of the stage's run from ``metrics.jsonl`` before the loop logs them
again; TensorBoard event files are append-only and keep both copies.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dopd_jax.trainer.params_io import config_mismatch, fingerprint, shapes

COMMIT_MARKER = "_CHECKPOINT_METADATA"  # written by orbax when a step is finalized
_UNFINISHED = "*.orbax-checkpoint-tmp*"  # an async save the process did not finish


class DamagedCheckpoint(Exception):
    """A step directory that cannot be trusted (set aside, never deleted)."""


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a stage resumes from."""

    step: int  # number of finished steps
    state: Any  # TrainState, structured like the ``like`` passed to ``restore``
    key: jax.Array | None  # typed PRNG key, None when the stage saved none
    extra: dict  # the caller's JSON saved with the step


def _barrier(name: str) -> None:
    """Waits for every process (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _global_replicated(x: jax.Array) -> jax.Array:
    """``x`` (the same value in every process) replicated over all processes' devices.

    One process: ``x`` unchanged. Several: orbax cannot save a single-device
    array, so it becomes a global array replicated on every device.
    """
    if jax.process_count() == 1:
        return x
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.make_array_from_process_local_data(sharding, np.asarray(jax.device_get(x)))


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _aside_path(path: str) -> str:
    dst, n = path + ".corrupt", 1
    while os.path.exists(dst):
        dst, n = f"{path}.corrupt{n}", n + 1
    return dst


class StageCheckpointer:
    """Saves and restores the training state of one stage (a context manager).

    Args:
      directory: the stage's checkpoint directory (``WORKDIR/ckpt/<stage>``).
      config: JSON-able dict of everything the stage's state depends on; a
        resume under a different one raises ``ValueError``.
      keep: number of latest steps kept.
      log: sink for warnings.
      async_save: write in a background thread (``close`` waits for it).

    Raises:
      ValueError: the latest readable checkpoint was written under another
        config (raised here, before the caller builds or compiles anything).
    """

    def __init__(
        self,
        directory: str,
        config: dict,
        *,
        keep: int = 2,
        log: Callable[[str], None] = print,
        async_save: bool = True,
    ):
        self.directory = os.path.abspath(directory)
        self._config = json.loads(json.dumps(config))
        self._log = log
        for path in sorted(glob.glob(os.path.join(self.directory, _UNFINISHED))):
            log(f"WARNING: discarding {path}: a save the previous process did not finish")
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
        )
        try:
            self._latest_meta()
        except ValueError:
            self._manager.close()
            raise

    def __enter__(self) -> StageCheckpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def steps(self) -> list[int]:
        """Steps currently held (damaged ones included until a restore sets them aside)."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, key: jax.Array | None, extra: dict) -> None:
        """Writes ``state`` (+ ``key``) and ``extra`` as step ``step`` (asynchronously)."""
        tree = self._tree(state, key)
        extra = json.loads(json.dumps(extra))  # a snapshot: the async write happens later
        payload = {
            "step": int(step),
            "config": self._config,
            "extra": extra,
            "checksums": fingerprint(tree),
            "shapes": shapes(tree),
            "key_impl": None if key is None else str(jax.random.key_impl(key)),
        }
        meta = {"payload": payload, "sha256": _digest(payload)}
        self._manager.save(
            int(step),
            force=True,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore(self, like, like_key: jax.Array | None = None) -> Restored | None:
        """The latest undamaged step, restored into the structure of ``like``.

        Args:
          like: a TrainState with the shapes, dtypes and shardings to restore.
          like_key: a PRNG key when the stage saved one, else None.

        Returns:
          ``Restored``, or None when no usable checkpoint exists.

        Raises:
          ValueError: a checkpoint of another config or of other shapes.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._tree(like, like_key))
        while (found := self._latest_meta()) is not None:
            step, payload = found
            self._check_shapes(step, payload, target)
            try:
                tree = self._manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
                ).state
                if fingerprint(tree) != payload["checksums"]:
                    raise DamagedCheckpoint("array checksums differ from the saved ones")
            except Exception as e:  # any read failure of a finalized step is damage
                self._set_aside(step, e)
                continue
            key = tree.get("rng_key_data")
            if key is not None:  # replicated: every process holds it whole. As a host value
                # it is placed like a fresh key (the saved copy's mesh is not the steps').
                data = np.asarray(key.addressable_data(0))
                key = jax.random.wrap_key_data(data, impl=payload["key_impl"])
            return Restored(step, tree["train_state"], key, payload["extra"])
        return None

    @staticmethod
    def _tree(state, key) -> dict:
        tree = {"train_state": state}
        if key is not None:
            tree["rng_key_data"] = _global_replicated(jax.random.key_data(key))
        return tree

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _read_meta(self, step: int) -> dict:
        if not os.path.exists(os.path.join(self._step_dir(step), COMMIT_MARKER)):
            raise DamagedCheckpoint(f"commit marker {COMMIT_MARKER} is missing")
        meta = self._manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        ).meta
        if not isinstance(meta, dict) or meta.get("sha256") != _digest(meta.get("payload")):
            raise DamagedCheckpoint("meta/ content does not match its SHA-256")
        return meta["payload"]

    def _latest_meta(self) -> tuple[int, dict] | None:
        """(step, payload) of the latest step with readable meta, config checked."""
        for step in reversed(self.steps()):
            try:
                payload = self._read_meta(step)
            except Exception as e:
                self._set_aside(step, e)
                continue
            diff = config_mismatch(payload["config"], self._config)
            if diff:
                raise ValueError(
                    f"checkpoint {self._step_dir(step)} was written with an incompatible config: "
                    f"{'; '.join(diff[:6])}. Restore those settings, use a fresh --workdir, or "
                    f"move {self.directory} away to restart this stage (nothing was changed)"
                )
            return step, payload
        return None

    def _check_shapes(self, step: int, payload: dict, target) -> None:
        saved, now = payload["shapes"], shapes(target)
        diff = [
            f"{k}: {saved.get(k)} in the checkpoint, {now.get(k)} now"
            for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)
        ]
        if diff:
            raise ValueError(
                f"checkpoint {self._step_dir(step)} holds other shapes than the "
                f"current model/optimizer: {'; '.join(diff[:5])}"
            )

    def _set_aside(self, step: int, error: Exception) -> None:
        """Renames a damaged step (process 0; every process reaches this for the same step)."""
        src = self._step_dir(step)
        dst = _aside_path(src)
        _barrier(f"dopd_jax.set_aside.{step}.before")  # all have read it before it moves
        if jax.process_index() == 0:
            os.rename(src, dst)
        _barrier(f"dopd_jax.set_aside.{step}.after")
        self._log(
            f"WARNING: checkpoint {src} is damaged ({type(error).__name__}: "
            f"{str(error)[:200]}); moved it to {dst} and using the previous one"
        )
        self._manager.reload()


def resume(
    ckpt: StageCheckpointer,
    run: str,
    state,
    key,
    stream,
    *,
    workdir: str,
    log: Callable[[str], None] = print,
):
    """Restores the latest checkpoint of a stage, if any, into its state, key and stream.

    Metric records of ``run`` logged after the restored step are dropped from
    ``workdir/metrics.jsonl``: the resumed loop logs those steps again.

    Args:
      ckpt: the stage's checkpointer.
      run: the stage's metric run tag (``teacher_sft``, ``distill/dopd``...).
      state: the freshly initialised TrainState (shapes and shardings to restore).
      key: the stage's PRNG key, or None.
      stream: the data stream (``get_state``/``set_state``), set to the saved position.
      workdir: the experiment workdir.
      log: sink for messages.

    Returns:
      ``(start_step, state, key, extra)``; the inputs, 0 and ``{}`` for a fresh start.
    """
    restored = ckpt.restore(state, key)
    start, extra = 0, {}
    if restored is not None:
        start, state, key, extra = restored.step, restored.state, restored.key, restored.extra
        stream.set_state(extra["stream"])
        log(f"resuming {run} after step {start} from {ckpt.directory}")
    if jax.process_index() == 0:  # the process that writes metrics.jsonl
        drop_metrics_after(workdir, run, start, log)
    return start, state, key, extra


def drop_metrics_after(
    workdir: str, run: str, step: int, log: Callable[[str], None] = print
) -> int:
    """Removes ``metrics.jsonl`` records of ``run`` logged after ``step``.

    A resumed stage recomputes every step after the checkpoint it restored,
    so the records the killed process wrote for them would otherwise appear
    twice. A torn last line (the process died mid-write) is dropped too.

    Returns:
      the number of lines removed.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.read().splitlines()
    keep = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}") from None
        if not (rec.get("run") == run and rec.get("step", 0) > step):
            keep.append(line)
    dropped = len(lines) - len(keep)
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
        log(f"resuming {run} at step {step}: dropped {dropped} metric records written after it")
    return dropped
