"""Prepare task data once as a TFDS dataset that training and evaluation read.

    python -m dopd_jax.data.prepare --source arith --name arith_v1 --data_dir D \\
        [--n_train 5000 --n_test 500 --seed 0 --misleading_fraction 0.1]
    python -m dopd_jax.data.prepare --source jsonl --train T.jsonl --test E.jsonl \\
        [--test2 E2.jsonl ...] --name mine --data_dir D
    python -m dopd_jax.data.prepare --source gsm8k --manual_dir DIR --name gsm8k --data_dir D

Why a separate step: generating (or parsing and normalising) the data once and
freezing it on disk makes every run read the same records, lets a run resume
from a grain iterator state over a fixed record count, and keeps data errors
out of the training job. Generated sources write the splits ``train``,
``test`` and ``hard``; ``jsonl`` writes ``train``, ``test`` and one more eval
split per extra ``--<split> FILE`` flag, named after the flag; ``gsm8k`` reads
``train.jsonl`` / ``test.jsonl`` of a local GSM8K copy in ``--manual_dir``
(``dopd_jax.data.builders.gsm8k``) into ``train`` and ``test``. ``prepare(argv)``
is what ``main`` runs, so tests call it in-process; errors leave ``main`` as
one line on stderr (exit status 1), without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from dopd_jax.data.example import Example

GENERATED = ("arith", "sort", "linear")
GENERATED_SPLITS = ("train", "test", "hard")
SOURCES = GENERATED + ("jsonl", "gsm8k")
_GENERATED_FLAGS = {"n_train": 5000, "n_test": 500, "seed": 0, "misleading_fraction": 0.0}
_SPLIT_FLAG = re.compile(r"^--([a-z][a-z0-9_]*)(?:=(.*))?$")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ValueErrors (one line, no exit)."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def _parser() -> _Parser:
    parser = _Parser(
        prog="python -m dopd_jax.data.prepare",
        allow_abbrev=False,
        description="Write task data as a TFDS array_record dataset.",
    )
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--name", required=True, help="dataset name")
    parser.add_argument("--data_dir", required=True, help="TFDS data directory")
    parser.add_argument("--train", help="jsonl: the training file")
    parser.add_argument("--test", help="jsonl: the evaluation file")
    parser.add_argument("--manual_dir", help="gsm8k: the directory of train.jsonl, test.jsonl")
    parser.add_argument("--n_train", type=int, help="generated: train examples (5000)")
    parser.add_argument("--n_test", type=int, help="generated: test and hard examples (500)")
    parser.add_argument("--seed", type=int, help="generated: data seed (0)")
    parser.add_argument(
        "--misleading_fraction", type=float, help="generated: fraction of misleading examples (0.0)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset of this name"
    )
    return parser


def _extra_splits(rest: Sequence[str]) -> dict[str, str]:
    """``--<split> FILE`` / ``--<split>=FILE`` pairs left over by argparse.

    Args:
      rest: the unparsed arguments.

    Returns:
      split name -> file, in command-line order.
    """
    splits: dict[str, str] = {}
    i = 0
    while i < len(rest):
        match = _SPLIT_FLAG.match(rest[i])
        if match is None:
            raise ValueError(f"unrecognized argument {rest[i]!r}")
        split, path = match.group(1), match.group(2)
        if path is None:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                raise ValueError(f"--{split} needs a JSONL file")
            path, i = rest[i + 1], i + 1
        if split in splits:
            raise ValueError(f"--{split} given twice")
        splits[split] = path
        i += 1
    return splits


def _jsonl_splits(args: argparse.Namespace, rest: Sequence[str]) -> dict[str, list[Example]]:
    """The splits of ``--source jsonl``: train, test, then the extra eval files."""
    given = [f"--{flag}" for flag in _GENERATED_FLAGS if getattr(args, flag) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} apply to generated sources, not --source jsonl")
    if args.train is None or args.test is None:
        raise ValueError("--source jsonl needs --train FILE and --test FILE")
    files = {"train": args.train, "test": args.test, **_extra_splits(rest)}
    from dopd_jax.data import jsonl  # pylint: disable=import-outside-toplevel

    return {split: jsonl.read_jsonl(path) for split, path in files.items()}


def _gsm8k_splits(args: argparse.Namespace, rest: Sequence[str]) -> dict[str, list[Example]]:
    """The train/test splits of ``--source gsm8k`` from ``--manual_dir``."""
    flags = (*_GENERATED_FLAGS, "train", "test")
    given = [f"--{flag}" for flag in flags if getattr(args, flag) is not None]
    if given or rest:
        raise ValueError(f"--source gsm8k takes only --manual_dir, got {[*given, *rest]}")
    if args.manual_dir is None:
        raise ValueError("--source gsm8k needs --manual_dir DIR (holding train.jsonl, test.jsonl)")
    from dopd_jax.data.builders import gsm8k  # pylint: disable=import-outside-toplevel

    return gsm8k.gsm8k_splits(args.manual_dir)


def _generate_fn() -> Callable[..., list[Any]]:
    """``generate(domain, n, seed, split=..., misleading_fraction=...)``, wherever it lives.

    Imported lazily: the generated tasks are moving from ``dopd_jax.data.tasks``
    to ``dopd_jax.data.generated``.
    """
    for module_name in (
        "dopd_jax.data.generated",
        "dopd_jax.data.generated.tasks",
        "dopd_jax.data.tasks",
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is None or not module_name.startswith(e.name):
                raise  # a missing dependency inside the module, not the module itself
            continue
        if hasattr(module, "generate"):
            return module.generate
    raise ValueError(
        "cannot find the generated tasks' generate() in dopd_jax.data.generated "
        "or dopd_jax.data.tasks"
    )


def _from_generated(ex: Any) -> Example:
    """An ``Example`` from a generated task record (new or old field names).

    Args:
      ex: an ``Example``, or the older generated record with ``solution`` /
        ``priv_solution`` instead of ``response`` / ``priv_response``.

    Returns:
      The ``Example``.
    """
    if isinstance(ex, Example):
        return ex
    response = getattr(ex, "response", getattr(ex, "solution", None))
    priv_response = getattr(ex, "priv_response", getattr(ex, "priv_solution", None))
    return Example(
        prompt=ex.prompt,
        privileged=dict(ex.privileged),
        response=response,
        answer=ex.answer,
        domain=ex.domain,
        priv_response=priv_response,
        misleading=bool(ex.misleading),
        hardness=int(ex.hardness),
    )


def _generated_splits(args: argparse.Namespace, rest: Sequence[str]) -> dict[str, list[Example]]:
    """The train/test/hard splits of a generated source."""
    if rest:
        raise ValueError(
            f"unrecognized arguments {' '.join(rest)!r} (extra eval files are for --source jsonl)"
        )
    for flag in ("train", "test"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} is a JSONL file, for --source jsonl only")
    opts = {
        flag: default if getattr(args, flag) is None else getattr(args, flag)
        for flag, default in _GENERATED_FLAGS.items()
    }
    if opts["n_train"] < 1 or opts["n_test"] < 1:
        raise ValueError(
            f"--n_train and --n_test must be >= 1, got {opts['n_train']} and {opts['n_test']}"
        )
    generate = _generate_fn()
    sizes = {"train": opts["n_train"], "test": opts["n_test"], "hard": opts["n_test"]}
    return {
        split: [
            _from_generated(ex)
            for ex in generate(
                args.source,
                n,
                opts["seed"],
                split=split,
                misleading_fraction=opts["misleading_fraction"],
            )
        ]
        for split, n in sizes.items()
    }


def prepare(argv: Sequence[str]) -> str:
    """Parses ``argv``, builds the splits and writes the dataset.

    Args:
      argv: command-line arguments without the program name.

    Returns:
      The dataset directory (``<data_dir>/<name>/<version>``).

    Raises:
      ValueError: a bad argument, data file or record, or an existing dataset
        without ``--overwrite``; the message names it.
    """
    args, rest = _parser().parse_known_args(list(argv))
    if args.manual_dir is not None and args.source != "gsm8k":
        raise ValueError(f"--manual_dir is for --source gsm8k, not --source {args.source}")
    if args.source == "jsonl":
        splits = _jsonl_splits(args, rest)
    elif args.source == "gsm8k":
        splits = _gsm8k_splits(args, rest)
    else:
        splits = _generated_splits(args, rest)
    from dopd_jax.data import tfds_io  # pylint: disable=import-outside-toplevel

    path = tfds_io.write_dataset(
        splits,
        name=args.name,
        data_dir=args.data_dir,
        description=f"prepare --source {args.source}",
        overwrite=args.overwrite,
    )
    counts = ", ".join(f"{split} {len(examples)}" for split, examples in splits.items())
    print(f"wrote {path}: {counts} records")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: ``prepare(sys.argv[1:])``, errors as one line on stderr."""
    try:
        prepare(sys.argv[1:] if argv is None else argv)
    except (ValueError, OSError) as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
