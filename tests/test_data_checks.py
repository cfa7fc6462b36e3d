"""Up-front data checks: over-long rows are counted, refused or left out, never truncated."""

import dataclasses

import pytest

from dopd_jax.data import sources
from dopd_jax.data.example import Example
from dopd_jax.models import train_tokenizer
from dopd_jax.pipeline import config as config_lib
from dopd_jax.pipeline import data_checks, specs


def _example(digits: int, i: int) -> Example:
    x = f"Q: {'1' * digits}+{i}=?"
    return Example(
        prompt=x, privileged={"none": "", "privileged": " hint: 1"}, response=" A: 1", answer="1"
    )


def _task(n_long: int):
    train = [_example(2, i) for i in range(20 - n_long)] + [_example(30, i) for i in range(n_long)]
    seen = {}

    def train_fn(batch_size, seed, keep=None):
        seen["keep"] = keep
        return iter(())

    task = sources.TaskData(
        train=train_fn,
        eval_sets={"test": [_example(2, 1), _example(30, 2)]},
        verifier=lambda ex, text: True,
        corpus=lambda: sources.example_texts(train),
        train_sample=train[:8],
        train_examples=lambda: train,
    )
    return task, seen


def _spec(fraction: float):
    c = config_lib.base_config()
    c.task.source, c.task.priv_form, c.task.sft_forms = "jsonl", "privileged", ("privileged",)
    c.task.max_prompt_len, c.task.max_overlength_fraction = 16, fraction
    c.distill.methods = ("opd",)
    return specs.experiment_spec(c)


def test_over_long_rows_are_refused_above_the_allowed_fraction():
    task, _ = _task(n_long=4)
    tok = train_tokenizer(task.corpus(), vocab_size=32, hard_vocab_limit=False)
    with pytest.raises(ValueError, match=r"training data: 4 of 20 rows \(20.0%\).*row 16"):
        data_checks.check_task(_spec(0.1), task, tok, print)


def test_over_long_rows_are_left_out_within_the_fraction():
    task, seen = _task(n_long=2)
    tok = train_tokenizer(task.corpus(), vocab_size=32, hard_vocab_limit=False)
    logged = []
    checked = data_checks.check_task(_spec(0.5), task, tok, logged.append)
    checked.train(4, 0)
    assert seen["keep"] == list(range(18))  # the stream skips the two long rows
    assert [ex.prompt for ex in checked.eval_sets["test"]] == ["Q: 11+1=?"]
    assert len(logged) == 2 and all("left out" in m for m in logged)


def test_missing_privileged_form_is_named():
    task, _ = _task(n_long=0)
    tok = train_tokenizer(task.corpus(), vocab_size=32, hard_vocab_limit=False)
    spec = dataclasses.replace(
        _spec(0.0), task=dataclasses.replace(_spec(0.0).task, priv_form="hints")
    )
    with pytest.raises(ValueError, match="privileged form 'hints'.*missing"):
        data_checks.check_task(spec, task, tok, print)
