"""Training batches over a prepared split: grain's pipeline, resumable and multi-process.

``TrainIterator`` is grain's own pipeline
``source -> shuffle(seed) -> repeat -> map(to_example) -> batch(local)
-> [process_index::process_count]``: global batch ``k`` is the local
batches ``k * process_count .. k * process_count + process_count - 1``, so
process ``i`` reads only rows ``[i * local, (i + 1) * local)`` of it.
Without worker processes grain's iterator state is ``{"next_index": k}``
(JSON), the number of global batches consumed, so a checkpoint also
resumes under another process count with the same global batch size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grain
from absl import flags

from dopd_jax.data.example import Example
from dopd_jax.data.tfds_io import DataSource, to_example

STATE_FIELDS = ("name", "split", "num_records", "seed", "batch_size")


def _source_identity(source: DataSource, name: str | None, split: str | None) -> tuple[str, str]:
    """(name, split) of a source: the arguments, else a TFDS source's own."""
    info = getattr(source, "dataset_info", None)
    if name is None:
        name = info.name if info is not None else ""
    if split is None:
        split = getattr(source, "split", None) or ""
    return str(name), str(split)


class TrainIterator:
    """Infinite, resumable, multi-process batches of ``Example`` over a training split.

    Epoch ``e`` visits every record once in the order of a permutation seeded
    by ``seed + e`` (grain's ``MapDataset.shuffle`` then ``repeat``); batches
    run on across epoch boundaries. ``get_state`` is JSON-serialisable:
    ``{"dataset": {name, split, num_records, seed, batch_size},
    "worker_count": n, "grain": <grain iterator state>}``; ``set_state``
    refuses a state of another dataset identity or worker count and otherwise
    continues exactly where the saved iterator was. The process count is not
    part of the identity: the grain state counts global batches, so it also
    resumes under another count.
    """

    def __init__(
        self,
        source: DataSource,
        batch_size: int,
        seed: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
        worker_count: int = 0,
        read_threads: int = 0,
        name: str | None = None,
        split: str | None = None,
    ):
        """Builds the pipeline.

        Args:
          source: the training split's data source (``load_splits(...)[split]``)
            or any sequence of records that ``to_example`` decodes.
          batch_size: the global batch size, divisible by ``process_count``.
          seed: shuffle seed in [0, 2**32).
          process_index: this process's index in [0, process_count).
          process_count: number of processes sharing each global batch.
          worker_count: grain worker processes (``mp_prefetch``); 0 reads in
            this process.
          read_threads: grain read threads with a prefetch buffer; 0 reads
            on demand. The batches do not depend on it.
          name: dataset name for the state (default: the TFDS source's name).
          split: split name for the state (default: the TFDS source's split).
        """
        name, split = _source_identity(source, name, split)
        self._identity = {
            "name": name,
            "split": split,
            "num_records": len(source),
            "seed": seed,
            "batch_size": batch_size,
        }
        _check_iterator_args(self._identity, process_index, process_count, worker_count)
        self._worker_count = worker_count
        local = batch_size // process_count
        dataset = (
            grain.MapDataset.source(source)
            .shuffle(seed=seed)
            .repeat()
            .map(to_example)
            .batch(local, batch_fn=list)[process_index::process_count]
        )
        options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads)
        iter_dataset = dataset.to_iter_dataset(read_options=options)
        if worker_count:
            _mark_absl_flags_parsed()
            iter_dataset = iter_dataset.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=worker_count)
            )
        self._iterator = iter(iter_dataset)

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> list[Example]:
        """The next local batch: ``batch_size // process_count`` examples."""
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        """The JSON-serialisable position: dataset identity plus grain's state.

        Returns:
          ``{"dataset": {...}, "worker_count": n, "grain": {...}}``.
        """
        return {
            "dataset": dict(self._identity),
            "worker_count": self._worker_count,
            "grain": self._iterator.get_state(),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continues from a ``get_state`` result (possibly JSON round-tripped).

        Args:
          state: a state this or an identical iterator returned.

        Raises:
          ValueError: if the state is malformed, a dataset identity field
            (name, split, num_records, seed, batch_size) differs, or the
            worker count differs (grain's state has one entry per worker);
            the message names the field.
        """
        if not isinstance(state, Mapping) or not {"dataset", "grain"} <= set(state):
            raise ValueError(
                "TrainIterator state must be a dict with keys 'dataset' "
                f"and 'grain', got {state!r:.200}"
            )
        saved = state["dataset"]
        for field in STATE_FIELDS:
            if field not in saved:
                raise ValueError(f"TrainIterator state has no dataset field {field!r}")
            if saved[field] != self._identity[field]:
                raise ValueError(
                    f"TrainIterator state is for {field}={saved[field]!r} but this "
                    f"iterator has {field}={self._identity[field]!r}"
                )
        if state.get("worker_count", 0) != self._worker_count:
            raise ValueError(
                f"TrainIterator state is for worker_count="
                f"{state.get('worker_count', 0)!r} but this iterator has "
                f"worker_count={self._worker_count!r} (grain's state "
                "layout depends on it)"
            )
        self._iterator.set_state(state["grain"])

    def close(self) -> None:
        """Stops grain worker processes, if any (a no-op without workers)."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def _mark_absl_flags_parsed() -> None:
    """Lets grain's worker processes read their absl flags' defaults.

    ``mp_prefetch`` reads ``FLAGS.grain_*`` directly and raises
    ``UnparsedFlagAccessError`` in a program that never parsed absl flags (one
    not started through ``absl.app.run``); the in-process path tolerates that.
    """
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _check_iterator_args(
    identity: Mapping[str, Any], process_index: int, process_count: int, worker_count: int
) -> None:
    where = f"dataset {identity['name']!r} split {identity['split']!r}"
    if identity["num_records"] == 0:
        raise ValueError(f"{where} has no records to train on")
    batch_size, seed = identity["batch_size"], identity["seed"]
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count), got {process_index} of {process_count}"
        )
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} must be positive and divisible by "
            f"process_count {process_count} ({where})"
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
