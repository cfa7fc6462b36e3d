"""What every stage needs: specs, workdir, tokenizer, task data, device mesh, progress.

``build_context`` prepares the task (a JSONL task becomes a TFDS dataset
under ``WORKDIR/data`` once), loads or trains the tokenizer, and checks the
data against the configured lengths and the runs' needs before any model is
built or compiled.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from dopd_jax import sharding
from dopd_jax.data import sources
from dopd_jax.models.tokenizer import Tokenizer, train_tokenizer
from dopd_jax.pipeline import data_checks, hf_models
from dopd_jax.pipeline.specs import ExperimentSpec


@dataclasses.dataclass
class Context:
    """What every stage needs."""

    spec: ExperimentSpec
    workdir: str
    tok: Any  # tokenizer: encode / decode / bos_id / eos_id / pad_id / vocab_size
    task: sources.TaskData
    log: Callable[[str], None]
    mesh: Any = None  # jax.sharding.Mesh of every jitted step (config.mesh)

    @property
    def eval_sets(self) -> dict:
        return self.task.eval_sets


class Progress:
    """One progress bar over all steps of the experiment."""

    def __init__(self, total: int):
        self._bar = tqdm(
            total=total,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            disable=jax.process_index() != 0,
        )  # one bar per experiment

    @classmethod
    def for_spec(cls, spec: ExperimentSpec) -> Progress:
        return cls(spec.teacher.steps + spec.student.steps + sum(r.steps for r in spec.runs))

    def stage(self, name: str) -> None:
        self._bar.set_description(name)

    def advance(self, n: int, metrics: dict | None = None) -> None:
        self._bar.update(n)
        if metrics:
            keys = ("loss", "reward", "eval_acc", "frac_HS")
            self._bar.set_postfix({k: f"{metrics[k]:.3g}" for k in keys if k in metrics})

    def skip(self, n: int) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def barrier(name: str) -> None:
    """Waits for every process (a no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _prepare_task(spec: ExperimentSpec, workdir: str) -> None:
    if spec.task.source == "jsonl":  # process 0 writes the TFDS dataset once
        if jax.process_index() == 0:
            sources.prepare_jsonl(spec.task, workdir)
        barrier("dopd_jax.task_prepared")


def _restored_tokenizer_path(spec: ExperimentSpec) -> str | None:
    """The tokenizer of a ``workdir:PATH`` model source, if any (models share it)."""
    for m in (spec.teacher, spec.student):
        if m.source.startswith("workdir:"):
            return os.path.join(m.source[len("workdir:") :], "tokenizer.model")
    return None


def load_tokenizer(spec: ExperimentSpec, workdir: str, task: sources.TaskData) -> Tokenizer:
    """A checkpoint's tokenizer (``hf:`` models); else the workdir's; else a restored
    model's; else one trained on the task."""
    if spec.hf_models():
        return hf_models.load_tokenizer(spec)
    path = os.path.join(workdir, "tokenizer.model")
    exists = os.path.exists(path)
    barrier("dopd_jax.tokenizer_checked")  # every process decides before process 0 writes
    if exists:
        return Tokenizer.load(path)
    restored = _restored_tokenizer_path(spec)
    if restored is not None:
        if not os.path.exists(restored):
            raise ValueError(f"model source workdir has no tokenizer: {restored} not found")
        tok = Tokenizer.load(restored)
    else:  # deterministic: every process trains the same tokenizer
        tok = train_tokenizer(
            task.corpus(),
            vocab_size=spec.tokenizer.vocab_size,
            hard_vocab_limit=spec.tokenizer.hard_vocab_limit,
        )
    if jax.process_index() == 0:
        tok.save(path) if restored is None else shutil.copyfile(restored, path)
    return tok


def build_context(spec: ExperimentSpec, workdir: str, log) -> Context:
    """Prepares the task and tokenizer and checks the data before anything compiles."""
    _prepare_task(spec, workdir)
    task = sources.build_task(spec.task, spec.task_seed, workdir)
    if spec.domain_teachers or any(r.domains or r.teachers for r in spec.runs):
        from dopd_jax.pipeline import config_checks

        config_checks.check_domains(spec, task.domains)
    tok = load_tokenizer(spec, workdir, task)
    task = data_checks.check_task(spec, task, tok, log)
    return Context(spec, workdir, tok, task, log, sharding.make_mesh(dict(spec.mesh)))
