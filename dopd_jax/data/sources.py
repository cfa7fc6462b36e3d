"""Task sources: where prompts, privileged contexts, references and verifiers come from.

A source turns a ``TaskSpec`` into ``TaskData``: a resumable training stream
of global batches of ``Example``s, named evaluation sets, a verifier and the
texts a tokenizer is trained on. Registered sources:

  generated  the arith / sort / linear families, drawn on demand from their
             index (an infinite stream that needs no files, so it does not go
             through TFDS; ``prepare --source arith`` writes a sample when a
             file is wanted)
  jsonl      the user's JSONL files, written once as a TFDS dataset under
             ``WORKDIR/data`` and read back like ``tfds``
  tfds       a dataset written by ``python -m dopd_jax.data.prepare``, read
             through ``tfds`` data sources and a grain pipeline

or ``package.module:NAME``, a function ``(spec, workdir) -> TaskData`` in
the user's own code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from dopd_jax import plugins
from dopd_jax.data import generated, jsonl, verifiers
from dopd_jax.data.example import NO_PRIVILEGE, Example
from dopd_jax.data.streams import TrainStream


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """The task part of an experiment (typed; built from ``config.task``)."""

    source: str = "generated"  # "generated" | "jsonl" | "tfds" | "package.module:NAME"
    priv_form: str = "exec_hints"  # the form of p used for distillation and evaluation
    sft_forms: tuple[str, ...] = generated.SFT_FORMS  # forms of p sampled during SFT
    max_prompt_len: int = 16  # tokens of [BOS] x
    max_priv_len: int = 32  # tokens of [BOS] x p
    max_overlength_fraction: float = 0.0  # training rows over the limits refused above this
    verifier: str = ""  # "" = the source's own; a name in VERIFIERS or an import path
    # generated
    domain: str = "arith"
    # "field=value,..." (every domain's knobs, e.g. "n_ops=3,max_digits=2") or, with
    # several domains, "arith:max_digits=1;sort:n_items=8" (domain_difficulty)
    difficulty: str = ""
    ood_difficulty: str = ""  # non-empty: an extra evaluation set "ood" drawn at this one
    misleading_fraction: float = 0.2
    n_test: int = 1000
    n_hard: int = 1000
    corpus_size: int = 3000  # generated examples per domain for the tokenizer corpus
    # jsonl
    train_path: str = ""
    test_path: str = ""
    test2_path: str = ""
    # tfds
    data_dir: str = ""
    name: str = ""


@dataclasses.dataclass(frozen=True)
class TaskData:
    """What the pipeline needs from a task.

    Attributes:
      train: ``(batch_size, seed) -> stream`` of global batches (lists of
        Examples) with ``get_state()`` / ``set_state(state)``.
      eval_sets: evaluation set name -> examples, in table order.
      verifier: ``(example, response_text) -> bool``.
      corpus: ``() -> texts`` for training a tokenizer.
      train_sample: a few hundred training examples for up-front checks.
      train_examples: ``() -> every training example`` of a finite source
        (None for an infinite stream); ``train(..., keep=indices)`` then
        streams only those rows.
    """

    train: Callable[..., Any]
    eval_sets: dict[str, list[Example]]
    verifier: Callable[[Example, str], bool]
    corpus: Callable[[], list[str]]
    train_sample: list[Example]
    train_examples: Callable[[], list[Example]] | None = None
    domains: tuple[str, ...] = ()  # the domains of a multi-domain task (MOPD), in order

    def train_domains(self, batch_size: int, seed: int, domains) -> Any:
        """``train`` restricted to ``domains`` (all of them when empty)."""
        if not domains or tuple(domains) == self.domains:
            return self.train(batch_size, seed)
        unknown = sorted(set(domains) - set(self.domains))
        if unknown:
            raise ValueError(
                f"training domains {unknown} are not among the task's domains {list(self.domains)}"
            )
        if self.train_examples is None:
            return self.train(batch_size, seed, domains=tuple(domains))
        keep = [i for i, ex in enumerate(self.train_examples()) if ex.domain in domains]
        return self.train(batch_size, seed, keep=keep)


class Subset:
    """Rows ``indices`` of a random-access source (for grain: ``len`` and ``[i]``)."""

    def __init__(self, source, indices):
        self._source, self._indices = source, list(indices)
        self.dataset_info = getattr(source, "dataset_info", None)
        self.split = getattr(source, "split", None)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i):
        return self._source[self._indices[i]]


def example_texts(examples) -> list[str]:
    """Every segment text of the examples (prompt, each p, responses)."""
    texts = []
    for ex in examples:
        texts.append(ex.prompt)
        texts.extend(t for t in ex.privileged.values() if t)
        texts.extend(t for t in (ex.response, ex.priv_response) if t)
    return texts


def parse_difficulty(text: str, key: str = "task.difficulty") -> dict:
    """``"n_ops=3,ops=+*"`` -> ``{"n_ops": 3, "ops": "+*"}`` (integers where they parse)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"config.{key}: expected field=value items, got {item!r} in {text!r}")
        value = value.strip()
        out[name.strip()] = int(value) if value.lstrip("-").isdigit() else value
    return out


def domain_difficulty(text: str, domains, key: str = "task.difficulty") -> dict[str, dict]:
    """Difficulty overrides per generated domain: ``"n_ops=3"`` applies to every
    domain, ``"arith:n_ops=3;sort:n_items=8"`` to the domains named (the others keep
    their defaults). Returns ``{domain: {field: value}}``."""
    if ":" not in text:
        shared = parse_difficulty(text, key)
        return {d: shared for d in domains} if shared else {}
    out = {}
    for part in filter(None, (t.strip() for t in text.split(";"))):
        domain, sep, fields = (x.strip() for x in part.partition(":"))
        if not sep or domain not in domains:
            raise ValueError(
                f"config.{key}: {part!r} must be domain:field=value,... with the domain "
                f"one of the task's {list(domains)}"
            )
        if domain in out:
            raise ValueError(f"config.{key}: domain {domain!r} appears twice in {text!r}")
        out[domain] = parse_difficulty(fields, key)
    return out


def task_domains(spec: TaskSpec) -> tuple[str, ...]:
    """The generated domains of ``task.domain`` (one name, or several comma-separated)."""
    domains = tuple(d.strip() for d in spec.domain.split(",") if d.strip())
    if not domains or len(set(domains)) != len(domains):
        raise ValueError(f"config.task.domain: need distinct domain names, got {spec.domain!r}")
    for d in domains:
        generated.get_domain(d)
    return domains


def generated_task(spec: TaskSpec, seed: int, workdir: str = "") -> TaskData:
    """The generated family ``spec.domain``: train stream, test and hard sets; with
    several domains (``"arith,sort"``) a uniform mix and one test set per domain."""
    all_domains = task_domains(spec)
    if spec.ood_difficulty and len(all_domains) > 1:
        raise ValueError(
            f"config.task.ood_difficulty: one domain only (its knobs), got {spec.domain!r}"
        )
    per_domain = domain_difficulty(spec.difficulty, all_domains)

    def draw(d, n, draw_seed, split, difficulty=None):
        difficulty = per_domain.get(d) if difficulty is None else difficulty
        frac = spec.misleading_fraction
        return generated.generate(
            d, n, draw_seed, split=split, difficulty=difficulty, misleading_fraction=frac
        )

    def train(batch_size, stream_seed, domains=all_domains):
        return TrainStream(
            list(domains),
            batch_size,
            stream_seed,
            difficulty={d: per_domain[d] for d in domains if d in per_domain} or None,
            misleading_fraction=spec.misleading_fraction,
        )

    if len(all_domains) == 1:
        (d,) = all_domains
        evals = {
            "test": draw(d, spec.n_test, seed + 1, "test"),
            "hard": draw(d, spec.n_hard, seed + 2, "hard"),
        }
        if spec.ood_difficulty:
            ood = parse_difficulty(spec.ood_difficulty, "task.ood_difficulty")
            evals["ood"] = draw(d, spec.n_test, seed + 3, "test", ood)
    else:
        evals = {f"test_{d}": draw(d, spec.n_test, seed + 1, "test") for d in all_domains}
    verifier = _verifier(spec, default=generated.verify)
    return TaskData(
        train=train,
        eval_sets=evals,
        verifier=verifier,
        corpus=lambda: generated.corpus_for_tokenizer(
            sorted(generated.DOMAINS), spec.corpus_size, seed
        ),
        train_sample=train(256, seed).batch(0),
        domains=all_domains if len(all_domains) > 1 else (),
    )


def _verifier(spec: TaskSpec, default):
    return verifiers.get_verifier(spec.verifier) if spec.verifier else default


def jsonl_splits(spec: TaskSpec) -> dict[str, list[Example]]:
    """The JSONL files of ``spec`` read and checked: ``train``, ``test`` (+ ``test2``)."""
    if not spec.train_path or not spec.test_path:
        raise ValueError(
            "config.task: the jsonl source needs task.train_path and "
            "task.test_path (JSONL files, one object per line)"
        )
    paths = {"train": spec.train_path, "test": spec.test_path}
    if spec.test2_path:
        paths["test2"] = spec.test2_path
    return {split: jsonl.read_jsonl(path) for split, path in paths.items()}


def tfds_task(
    spec: TaskSpec, seed: int, workdir: str = "", *, data_dir: str = "", name: str = ""
) -> TaskData:
    """A prepared TFDS dataset: split ``train`` streams, every other split evaluates."""
    from dopd_jax.data import grain_iterator, tfds_io  # tfds / grain only for these sources

    data_dir, name = data_dir or spec.data_dir, name or spec.name
    if not data_dir or not name:
        raise ValueError(
            "config.task: the tfds source needs task.data_dir and task.name "
            "(python -m dopd_jax.data.prepare writes them)"
        )
    splits = tfds_io.load_splits(data_dir, name)
    if "train" not in splits:
        raise ValueError(
            f"dataset {name} in {data_dir} has no 'train' split; it has {sorted(splits)}"
        )
    evals = {s: tfds_io.eval_examples(src) for s, src in splits.items() if s != "train"}
    if not evals:
        raise ValueError(f"dataset {name} in {data_dir} has no evaluation split")

    def train(batch_size, stream_seed, keep=None):
        source = splits["train"] if keep is None else Subset(splits["train"], keep)
        return grain_iterator.TrainIterator(source, batch_size=batch_size, seed=stream_seed)

    train_split = splits["train"]
    sample = [tfds_io.to_example(train_split[i]) for i in range(min(256, len(train_split)))]
    return TaskData(
        train=train,
        eval_sets=evals,
        verifier=_verifier(spec, default=verifiers.VERIFIERS["exact"]),
        corpus=lambda: example_texts(tfds_io.eval_examples(train_split))
        + example_texts(ex for exs in evals.values() for ex in exs),
        train_sample=sample,
        train_examples=lambda: tfds_io.eval_examples(train_split),
    )


JSONL_DATASET = "jsonl_task"  # the TFDS name of a jsonl task under WORKDIR/data


def jsonl_task(spec: TaskSpec, seed: int, workdir: str) -> TaskData:
    """The user's JSONL files, prepared once as a TFDS dataset under ``workdir/data``."""
    from dopd_jax.data import tfds_io

    data_dir = os.path.join(workdir, "data")
    if not os.path.exists(tfds_io.dataset_dir(data_dir, JSONL_DATASET)):
        raise ValueError(
            f"{data_dir} holds no prepared dataset; call sources.prepare_jsonl(spec, workdir) first"
        )
    return tfds_task(spec, seed, workdir, data_dir=data_dir, name=JSONL_DATASET)


def prepare_jsonl(spec: TaskSpec, workdir: str) -> None:
    """Writes the JSONL files as a TFDS dataset under ``workdir/data`` (once)."""
    from dopd_jax.data import tfds_io

    data_dir = os.path.join(workdir, "data")
    if not os.path.exists(tfds_io.dataset_dir(data_dir, JSONL_DATASET)):
        tfds_io.write_dataset(
            jsonl_splits(spec),
            name=JSONL_DATASET,
            data_dir=data_dir,
            description=f"{spec.train_path}, {spec.test_path}",
        )


SOURCES: dict[str, Callable[..., TaskData]] = {
    "generated": generated_task,
    "jsonl": jsonl_task,
    "tfds": tfds_task,
}


def build_task(spec: TaskSpec, seed: int, workdir: str) -> TaskData:
    """The TaskData of ``spec.source`` (registered name or import path)."""
    if plugins.is_import_path(spec.source):
        fn = plugins.load_object(spec.source, "task source")
    elif spec.source in SOURCES:
        fn = SOURCES[spec.source]
    else:
        raise ValueError(
            f"config.task.source: unknown source {spec.source!r}; valid: "
            f"{sorted(SOURCES)} or an import path 'package.module:NAME'"
        )
    return fn(spec, seed, workdir)


def check_forms(data: TaskData, spec: TaskSpec, needs_privilege: bool) -> None:
    """The privileged forms used must exist on the examples; errors name form and set."""
    used = {spec.priv_form} | set(spec.sft_forms)
    sets = {"train": data.train_sample, **data.eval_sets}
    for form in sorted(used - {NO_PRIVILEGE}):
        for name, examples in sets.items():
            missing = [i for i, ex in enumerate(examples) if form not in ex.privileged]
            if missing:
                raise ValueError(
                    f"config.task: privileged form {form!r} (task.priv_form / task.sft_forms) "
                    f"is missing from {name} example {missing[0]}; it has "
                    f"{sorted(examples[missing[0]].privileged)}"
                )
    if needs_privilege:
        jsonl.required_fields(data.train_sample, ["privileged"], "training data")
