"""GSM8K from a local copy as ``Example`` records: TFDS (array_record) or JSONL.

Nothing is downloaded at run time: put ``train.jsonl`` and ``test.jsonl`` of
https://github.com/openai/grade-school-math (``grade_school_math/data/``) in
one directory, ``manual_dir``. A row ``{"question": ..., "answer": "...
reasoning with <<48/2=24>> annotations...\\n#### 72"}`` becomes:

    prompt      the question, then INSTRUCTION (ask for ``\\boxed{}``)
    privileged  none: ""
                solution: " Reference solution: <reasoning>"  (annotations
                          stripped, without the ``#### N`` line)
                hints:    " Hint: <the first line of the reasoning>" (its
                          first sentence when the reasoning is one line)
                answer:   " The answer is 72."
    response    " <reasoning>\\nThe final answer is \\boxed{72}"
    answer      "72" (commas dropped), what ``boxed`` / ``last_number`` compare
    domain      "math"; hardness: the number of reasoning lines

Write it:
    python -m dopd_jax.data.prepare --source gsm8k --manual_dir DIR --name gsm8k --data_dir D
    python -m dopd_jax.data.builders.gsm8k --manual_dir DIR --out_dir OUT  # OUT/{train,test}.jsonl
or with TFDS's own builder API: ``Gsm8k(data_dir=D).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=DIR))`` (``build_tfds``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from dopd_jax.data import jsonl, tfds_io
from dopd_jax.data.example import NO_PRIVILEGE, Example

SPLITS = ("train", "test")
SOURCE_URL = "https://github.com/openai/grade-school-math"
SOURCE_PATH = "grade_school_math/data/"
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DOMAIN = "math"
FORMS = ("solution", "hints", "answer")
_ANNOTATION = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MANUAL_INSTRUCTIONS = (
    f"Download train.jsonl and test.jsonl from {SOURCE_URL} (path {SOURCE_PATH}) "
    "into one directory and pass it as manual_dir (prepare: --manual_dir)."
)


def strip_annotations(text: str) -> str:
    """``text`` without calculator annotations: ``"48/2 = <<48/2=24>>24"`` -> ``"48/2 = 24"``."""
    return _ANNOTATION.sub("", text)


def split_answer(answer: str, where: str) -> tuple[str, str]:
    """GSM8K's ``answer`` field as (reasoning without annotations, final number).

    Args:
      answer: ``"...reasoning...\\n#### 72"``.
      where: ``"<file>: line <n>"``, prefixed to error messages.

    Returns:
      ``(reasoning, "72")``: the reasoning lines stripped, the final answer
      with thousands commas dropped.

    Raises:
      ValueError: no ``####`` line, empty reasoning, or a final answer that is
        not a number.
    """
    head, sep, tail = answer.rpartition("####")
    if not sep:
        raise ValueError(f"{where}: 'answer' has no final '#### <number>' line")
    lines = [line.strip() for line in strip_annotations(head).strip().splitlines()]
    reasoning = "\n".join(line for line in lines if line)
    final = tail.strip().replace(",", "")
    if not reasoning:
        raise ValueError(f"{where}: 'answer' has no reasoning before '####'")
    if not _NUMBER.fullmatch(final):
        raise ValueError(f"{where}: final answer {tail.strip()!r} after '####' is not a number")
    return reasoning, final


def first_step(reasoning: str) -> str:
    """The first line of ``reasoning`` (one step a line), or its first sentence if one line."""
    lines = reasoning.splitlines()
    if len(lines) > 1:
        return lines[0]
    return _SENTENCE_END.split(reasoning, maxsplit=1)[0]


def privileged_forms(reasoning: str, final: str) -> dict[str, str]:
    """``{"none": "", "solution": ..., "hints": ..., "answer": ...}``, each with a leading space."""
    return {
        NO_PRIVILEGE: "",
        "solution": f" Reference solution: {reasoning}",
        "hints": f" Hint: {first_step(reasoning)}",
        "answer": f" The answer is {final}.",
    }


def example_from_row(row: Any, where: str) -> Example:
    """One GSM8K row as an ``Example``.

    Args:
      row: the parsed JSON value of one line.
      where: ``"<file>: line <n>"``, prefixed to error messages.

    Returns:
      The Example (see the module docstring for its fields).

    Raises:
      ValueError: not an object, or ``question`` / ``answer`` missing, empty,
        not a string or malformed.
    """
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"{where}: key {key!r} must be a non-empty string")
    reasoning, final = split_answer(row["answer"], where)
    return Example(
        prompt=f"{row['question'].strip()}\n{INSTRUCTION}",
        privileged=privileged_forms(reasoning, final),
        response=f" {reasoning}\nThe final answer is \\boxed{{{final}}}",
        answer=final,
        domain=DOMAIN,
        hardness=len(reasoning.splitlines()),
    )


def gsm8k_examples(path: str | os.PathLike[str]) -> list[Example]:
    """The examples of one GSM8K JSONL file, in file order (blank lines skipped).

    Args:
      path: ``train.jsonl`` or ``test.jsonl``.

    Returns:
      The Examples.

    Raises:
      ValueError: the file is unreadable or empty, or a row is malformed (the
        message names the file and the 1-based line).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = list(f)
    except OSError as e:
        raise ValueError(f"cannot read GSM8K file {path!r}: {e.strerror or e}") from e
    examples = []
    for n, line in enumerate(lines, start=1):
        if line.strip():
            where = f"{path}: line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
            examples.append(example_from_row(row, where))
    if not examples:
        raise ValueError(f"GSM8K file {path!r} has no rows")
    return examples


def split_files(manual_dir: str | os.PathLike[str]) -> dict[str, str]:
    """``{"train": <manual_dir>/train.jsonl, "test": ...}``; ValueError names a missing file."""
    files = {split: os.path.join(os.fspath(manual_dir), f"{split}.jsonl") for split in SPLITS}
    for path in files.values():
        if not os.path.isfile(path):
            raise ValueError(f"GSM8K file {path} is missing. {_MANUAL_INSTRUCTIONS}")
    return files


def gsm8k_splits(manual_dir: str | os.PathLike[str]) -> dict[str, list[Example]]:
    """The ``train`` and ``test`` splits of the GSM8K copy in ``manual_dir``."""
    return {split: gsm8k_examples(path) for split, path in split_files(manual_dir).items()}


def prepare_gsm8k(
    manual_dir: str, data_dir: str, name: str = "gsm8k", *, overwrite: bool = False
) -> str:
    """Writes GSM8K as TFDS dataset ``name`` with ``tfds_io.write_dataset``.

    Args:
      manual_dir: the directory holding ``train.jsonl`` and ``test.jsonl``.
      data_dir: the TFDS data directory.
      name: the dataset name (``task.name`` of a ``tfds`` task).
      overwrite: replace an existing dataset of that name.

    Returns:
      The dataset directory ``<data_dir>/<name>/1.0.0``.
    """
    return tfds_io.write_dataset(
        gsm8k_splits(manual_dir),
        name=name,
        data_dir=data_dir,
        description=f"GSM8K ({SOURCE_URL}) from {manual_dir}",
        overwrite=overwrite,
    )


def write_jsonl_splits(manual_dir: str, out_dir: str) -> dict[str, str]:
    """Writes ``out_dir/{train,test}.jsonl`` (``dopd_jax.data.jsonl`` rows); returns the paths."""
    splits = gsm8k_splits(manual_dir)  # parse both before writing either
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for split, examples in splits.items():
        written[split] = os.path.join(out_dir, f"{split}.jsonl")
        jsonl.write_jsonl(written[split], examples)
    return written


class Gsm8k(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder of GSM8K from ``manual_dir``, in the layout of ``tfds_io``.

    Not registered (TFDS's own catalog has a ``gsm8k`` that downloads); its
    features are ``tfds_io.features()``, so ``tfds_io.load_splits(data_dir,
    "gsm8k")`` reads what it writes.
    """

    VERSION = tfds.core.Version(tfds_io.VERSION)
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS
    # As in tfds_io._ExampleBuilder: the parent's property needs
    # `importlib_resources`; it only locates a checksums file (none here).
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"GSM8K as dopd_jax Examples ({SOURCE_URL})",
            features=tfds_io.features(),
            homepage=SOURCE_URL,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
        files = split_files(dl_manager.manual_dir)
        return {split: self._generate_examples(path) for split, path in files.items()}

    def _generate_examples(self, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
        for i, example in enumerate(gsm8k_examples(path)):
            yield i, tfds_io.to_record(example)

    def _log_download_bytes(self) -> None:
        # The parent prints "Downloading and preparing dataset Unknown size".
        logging.info("writing dataset %s to %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.info("wrote dataset %s to %s", self.name, self.data_dir)


def build_tfds(manual_dir: str, data_dir: str) -> str:
    """Writes ``<data_dir>/gsm8k/1.0.0`` through the ``Gsm8k`` TFDS builder; returns that path."""
    builder = Gsm8k(data_dir=data_dir, file_format=tfds_io.FILE_FORMAT)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    # A temporary download_dir: TFDS would otherwise leave <data_dir>/downloads.
    with tfds_io._quiet_progress_bars(), tempfile.TemporaryDirectory() as download_dir:
        builder.download_and_prepare(download_dir=download_dir, download_config=config)
    return os.fspath(builder.data_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """``--manual_dir DIR --out_dir OUT``: write OUT/train.jsonl and OUT/test.jsonl."""
    parser = argparse.ArgumentParser(
        prog="python -m dopd_jax.data.builders.gsm8k",
        description="Convert a local GSM8K copy to dopd_jax JSONL files.",
    )
    parser.add_argument("--manual_dir", required=True, help="holds train.jsonl and test.jsonl")
    parser.add_argument("--out_dir", required=True, help="where train.jsonl / test.jsonl go")
    args = parser.parse_args(argv)
    try:
        written = write_jsonl_splits(args.manual_dir, args.out_dir)
    except (ValueError, OSError) as e:
        print(f"gsm8k: error: {e}", file=sys.stderr)
        sys.exit(1)
    for path in written.values():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
