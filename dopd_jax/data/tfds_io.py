"""Prepared task data as a TFDS ``array_record`` dataset, read through grain.

Why this design:

* ``array_record`` gives random access, which grain's ``MapDataset`` needs
  for a global shuffle with an integer iterator state (no shuffle buffer to
  checkpoint), and TFDS adds split metadata and record counts on top.
* TensorFlow is not installed, and two TFDS 4.9.10 paths import it (or
  ``importlib_resources``, a Python < 3.9 dependency) lazily:
  ``AdhocBuilder._split_generators`` tests ``isinstance(x, tf.data.Dataset)``
  and ``DatasetBuilder.code_path`` (read by ``download_and_prepare`` to look
  for a checksums file) tests ``isinstance(x, importlib_resources...)``. So
  ``tfds.dataset_builders.store_as_tfds_dataset`` fails here, and this module
  uses a small ``AdhocBuilder`` subclass that overrides exactly those two
  (``_ExampleBuilder``). Reading (``builder_from_directory`` ->
  ``as_data_source``) needs no TensorFlow.
* Each ``Example`` field is one feature; optional texts are ``""`` plus a
  ``has_<field>`` flag so ``None`` round-trips, and ``privileged`` is a JSON
  object string (its forms differ between sources, a fixed feature dict
  cannot hold them). Shuffling at write time is disabled so records keep the
  order they were given in (``eval_examples`` returns them in that order).
* Training batches: ``grain_iterator.TrainIterator`` over a split of ``load_splits``.

On-disk layout: ``<data_dir>/<name>/1.0.0/`` holding ``dataset_info.json``,
``features.json`` and per split one shard file
``<name>-<split>.array_record-00000-of-00001`` (more for large splits).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core.dataset_builders import adhoc_builder
from tensorflow_datasets.core.utils import tqdm_utils

from dopd_jax.data.example import Example

VERSION = "1.0.0"
FILE_FORMAT = "array_record"
OPTIONAL_TEXTS = ("response", "answer", "priv_response")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

DataSource = Sequence[Mapping[str, Any]]  # a tfds ArrayRecordDataSource, or any sequence


def features() -> tfds.features.FeaturesDict:
    """The TFDS features of one stored ``Example``.

    Returns:
      A ``FeaturesDict``: texts, ``has_<field>`` flags for the optional texts,
      ``misleading`` (bool) and ``hardness`` (int64).
    """
    text, flag = tfds.features.Text, tfds.features.Scalar
    spec: dict[str, Any] = {"prompt": text(), "privileged": text(), "domain": text()}
    for field in OPTIONAL_TEXTS:
        spec[field] = text()
        spec[f"has_{field}"] = flag(dtype=np.bool_)
    spec["misleading"] = flag(dtype=np.bool_)
    spec["hardness"] = flag(dtype=np.int64)
    return tfds.features.FeaturesDict(spec)


def to_record(example: Example) -> dict[str, Any]:
    """Encodes one ``Example`` as a feature dict (the inverse of ``to_example``).

    Args:
      example: the record to store.

    Returns:
      A dict with the keys of ``features()``.
    """
    record: dict[str, Any] = {
        "prompt": example.prompt,
        "privileged": json.dumps(dict(example.privileged), ensure_ascii=False),
        "domain": example.domain,
        "misleading": bool(example.misleading),
        "hardness": int(example.hardness),
    }
    for field in OPTIONAL_TEXTS:
        value = getattr(example, field)
        record[field] = "" if value is None else value
        record[f"has_{field}"] = value is not None
    return record


def _text(value: Any) -> str:
    """A decoded text feature: TFDS returns ``bytes`` in NumPy mode."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def to_example(record: Mapping[str, Any]) -> Example:
    """Decodes one stored record (a data source item) into an ``Example``.

    Args:
      record: a feature dict as a TFDS data source returns it (texts as bytes,
        scalars as NumPy values) or as ``to_record`` builds it.

    Returns:
      The ``Example``, with ``None`` where the ``has_<field>`` flag is false.
    """
    optional = {
        field: _text(record[field]) if bool(record[f"has_{field}"]) else None
        for field in OPTIONAL_TEXTS
    }
    return Example(
        prompt=_text(record["prompt"]),
        privileged=json.loads(_text(record["privileged"])),
        domain=_text(record["domain"]),
        misleading=bool(record["misleading"]),
        hardness=int(record["hardness"]),
        **optional,
    )


class _ExampleBuilder(adhoc_builder.AdhocBuilder, skip_registration=True):
    """``AdhocBuilder`` writing Python iterables without importing TensorFlow."""

    # The parent's property resolves this module's package path and, on
    # Python >= 3.9 without `importlib_resources`, fails importing it. It is
    # only used to find a download-checksums file, which this data has none of.
    code_path = None

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
        # The parent first asks `isinstance(data, tf.data.Dataset)`, which
        # imports TensorFlow.
        del dl_manager
        return {split: iter(data) for split, data in self._split_datasets.items()}

    def _log_download_bytes(self) -> None:
        # The parent prints "Downloading and preparing dataset Unknown size ..."
        # to stdout; nothing is downloaded here.
        logging.info("writing dataset %s to %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.info("wrote dataset %s to %s", self.name, self.data_dir)


def dataset_dir(data_dir: str, name: str) -> str:
    """The directory of dataset ``name`` under ``data_dir``.

    Args:
      data_dir: the TFDS data directory.
      name: the dataset name.

    Returns:
      ``<data_dir>/<name>/<VERSION>``.
    """
    return os.path.join(os.fspath(data_dir), name, VERSION)


def _check_splits(examples_by_split: Mapping[str, Sequence[Example]]) -> None:
    if not examples_by_split:
        raise ValueError("write_dataset: no splits given")
    for split, examples in examples_by_split.items():
        if not isinstance(split, str) or not _NAME_RE.match(split):
            raise ValueError(f"split name {split!r} must match {_NAME_RE.pattern}")
        if not examples:
            raise ValueError(f"split {split!r} has no examples (TFDS cannot store an empty split)")
        for i, example in enumerate(examples):
            if not isinstance(example, Example):
                raise ValueError(
                    f"split {split!r} record {i} is a {type(example).__name__}, not an Example"
                )


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Turns TFDS's progress bars off for a block, restoring the previous setting."""
    previous = getattr(tqdm_utils, "_active", True)  # TFDS has no public getter
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(previous)


def write_dataset(
    examples_by_split: dict[str, list[Example]],
    *,
    name: str,
    data_dir: str,
    description: str = "",
    overwrite: bool = False,
) -> str:
    """Writes ``examples_by_split`` as TFDS dataset ``name`` in ``array_record`` files.

    Args:
      examples_by_split: split name -> non-empty list of ``Example``; the order
        of each list is the order of the stored split.
      name: dataset name (lower-case letters, digits, underscores).
      data_dir: the TFDS data directory (created if missing).
      description: free text stored in ``dataset_info.json``.
      overwrite: replace an existing dataset of that name instead of failing.

    Returns:
      The dataset directory ``<data_dir>/<name>/<VERSION>``.

    Raises:
      ValueError: on a bad name, split or record, or when the dataset exists
        and ``overwrite`` is false (the message names the directory).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"dataset name {name!r} must match {_NAME_RE.pattern}")
    _check_splits(examples_by_split)
    path = dataset_dir(data_dir, name)
    if os.path.exists(path):
        if not overwrite:
            raise ValueError(
                f"dataset {name!r} already exists at {path}; pass "
                "overwrite=True (prepare: --overwrite) to replace it"
            )
        shutil.rmtree(path)
    split_datasets = {
        split: [(i, to_record(ex)) for i, ex in enumerate(examples)]
        for split, examples in examples_by_split.items()
    }
    builder = _ExampleBuilder(
        name=name,
        version=VERSION,
        features=features(),
        split_datasets=split_datasets,
        data_dir=os.fspath(data_dir),
        description=description or f"dopd_jax task data {name}",
        file_format=FILE_FORMAT,
        disable_shuffling=True,
    )
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    with _quiet_progress_bars(), tempfile.TemporaryDirectory() as download_dir:
        builder.download_and_prepare(
            download_dir=download_dir, download_config=config, file_format=FILE_FORMAT
        )
    return os.fspath(builder.data_dir)


def load_splits(data_dir: str, name: str) -> dict[str, DataSource]:
    """Opens every split of dataset ``name`` as a random-access data source.

    Args:
      data_dir: the TFDS data directory ``write_dataset`` wrote to.
      name: the dataset name.

    Returns:
      split name -> data source (``len``, ``[i]``, ``__getitems__``) of raw
      records; decode them with ``to_example`` / ``eval_examples`` or iterate
      with ``TrainIterator``.

    Raises:
      ValueError: naming the directory when there is no dataset there.
    """
    path = dataset_dir(data_dir, name)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
        raise ValueError(
            f"no dataset {name!r} in {data_dir}: {path} has no "
            "dataset_info.json (write it with python -m dopd_jax.data.prepare)"
        )
    builder = tfds.builder_from_directory(path)
    return {str(split): source for split, source in builder.as_data_source().items()}


def _read_all(source: DataSource) -> list[Any]:
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None and len(source):
        return list(getitems(list(range(len(source)))))
    return [source[i] for i in range(len(source))]


def eval_examples(source: DataSource) -> list[Example]:
    """All records of a data source, decoded, in stored order.

    Args:
      source: a data source from ``load_splits`` (or any sequence of records).

    Returns:
      The list of ``Example``.
    """
    return [to_example(record) for record in _read_all(source)]
