"""Tests for the GSM8K builder: parsing, privileged forms, TFDS, prepare CLI and JSONL.

The fixture is four GSM8K-style rows written into tmp_path (no downloads).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from dopd_jax.data import jsonl, sources, tfds_io, verifiers
from dopd_jax.data import prepare as prepare_lib
from dopd_jax.data.builders import gsm8k

TRAIN_ROWS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half "
        "as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {
        "question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 "
        "minutes of babysitting. How much did she earn?",
        "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute. Working 50 minutes, "
        "she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
    },
    {
        "question": "A shop sells 250 pens a day for 4 days. How many pens does it sell?",
        "answer": "It sells 250*4 = <<250*4=1000>>1000 pens.\n#### 1,000",
    },
]
TEST_ROWS = [
    {
        "question": "  Tom has 5 apples and eats 7. How many does he have? ",
        "answer": "He has 5 - 7 = <<5-7=-2>>-2 apples.\nThat is a debt.\n#### -2",
    },
]
FORMS = ("none", "solution", "hints", "answer")


def _write_rows(path, rows, extra_lines=()):
    lines = [json.dumps(row) for row in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def manual_dir(tmp_path):
    root = tmp_path / "manual"
    root.mkdir()
    _write_rows(root / "train.jsonl", TRAIN_ROWS, extra_lines=[""])  # a trailing blank line
    _write_rows(root / "test.jsonl", TEST_ROWS)
    return root


def test_parsing_strips_annotations_and_the_final_line(manual_dir):
    train = gsm8k.gsm8k_examples(manual_dir / "train.jsonl")
    assert len(train) == 3
    first = train[0]
    assert first.prompt == TRAIN_ROWS[0]["question"] + "\n" + gsm8k.INSTRUCTION
    assert first.privileged["solution"] == (
        " Reference solution: Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert first.response == (
        " Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether "
        "in April and May.\nThe final answer is \\boxed{72}"
    )
    assert (first.answer, first.domain, first.hardness) == ("72", "math", 2)
    for ex in train:
        texts = [ex.response, *ex.privileged.values()]
        assert not any("<<" in t or ">>" in t or "####" in t for t in texts), ex
    assert train[2].answer == "1000"  # "#### 1,000"
    test = gsm8k.gsm8k_examples(manual_dir / "test.jsonl")
    assert test[0].prompt.startswith("Tom has 5 apples and eats 7. How many does he have?\n")
    assert test[0].answer == "-2"


def test_privileged_forms(manual_dir):
    natalia, weng, _ = gsm8k.gsm8k_examples(manual_dir / "train.jsonl")
    assert tuple(natalia.privileged) == FORMS
    assert natalia.p("none") == ""
    assert natalia.p("hints") == " Hint: Natalia sold 48/2 = 24 clips in May."
    assert natalia.p("answer") == " The answer is 72."
    # One reasoning line: the hint is its first sentence ("$0.2" does not end it).
    assert weng.p("hints") == " Hint: Weng earns 12/60 = $0.2 per minute."
    assert weng.p("solution").endswith("she earned 0.2 x 50 = $10.")
    assert weng.p("answer") == " The answer is 10."
    for ex in (natalia, weng):
        assert all(t.startswith(" ") for form, t in ex.privileged.items() if form != "none")


def test_the_verifiers_accept_the_response_for_the_answer(manual_dir):
    examples = [ex for exs in gsm8k.gsm8k_splits(manual_dir).values() for ex in exs]
    assert len(examples) == 4
    for ex in examples:
        assert verifiers.verify_boxed(ex, ex.response), ex
        assert verifiers.verify_last_number(ex, ex.response), ex
        assert not verifiers.verify_boxed(ex, "so \\boxed{7}"), ex
        assert not verifiers.verify_boxed(ex, ex.p("solution")), ex  # no box in p
    assert verifiers.verify_boxed(examples[2], "\\boxed{1,000}")


def test_a_missing_file_is_named_with_where_to_get_it(manual_dir):
    (manual_dir / "test.jsonl").unlink()
    with pytest.raises(ValueError) as err:
        gsm8k.gsm8k_splits(manual_dir)
    message = str(err.value)
    assert str(manual_dir / "test.jsonl") in message
    assert "https://github.com/openai/grade-school-math" in message
    assert "grade_school_math/data/" in message


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"question": "Q?"}', "key 'answer'"),
        ('{"question": "", "answer": "x\\n#### 1"}', "key 'question'"),
        ('{"question": "Q?", "answer": "no final line"}', "'#### <number>'"),
        ('{"question": "Q?", "answer": "x\\n#### seven"}', "'seven'"),
        ('{"question": "Q?", "answer": "#### 7"}', "no reasoning"),
    ],
)
def test_a_malformed_row_names_file_and_line(tmp_path, bad_line, expected):
    path = tmp_path / "train.jsonl"
    _write_rows(path, TRAIN_ROWS[:1], extra_lines=["", bad_line])  # the bad row is line 3
    with pytest.raises(ValueError) as err:
        gsm8k.gsm8k_examples(path)
    assert f"{path}: line 3: " in str(err.value)
    assert expected in str(err.value)


def _without_hardness(examples):
    return [dataclasses.replace(ex, hardness=0) for ex in examples]


def test_tfds_write_and_read_back_through_the_tfds_task(manual_dir, tmp_path):
    from dopd_jax.pipeline import config as config_lib
    from dopd_jax.pipeline import specs

    data_dir = str(tmp_path / "tfds")
    expected = gsm8k.gsm8k_splits(manual_dir)
    path = gsm8k.prepare_gsm8k(str(manual_dir), data_dir, name="gsm8k_small")
    assert path == tfds_io.dataset_dir(data_dir, "gsm8k_small")
    splits = tfds_io.load_splits(data_dir, "gsm8k_small")
    assert {s: tfds_io.eval_examples(src) for s, src in splits.items()} == expected
    # An experiment config pointing at it, as a user sets config.task.
    c = config_lib.base_config()
    c.task.update(
        source="tfds",
        data_dir=data_dir,
        name="gsm8k_small",
        priv_form="solution",
        sft_forms=gsm8k.FORMS,
        verifier="boxed",
    )
    spec = specs.task_spec(c)
    task = sources.build_task(spec, seed=0, workdir=str(tmp_path / "work"))
    sources.check_forms(task, spec, needs_privilege=True)
    assert task.eval_sets == {"test": expected["test"]}
    batch = next(iter(task.train(2, 0)))
    assert len(batch) == 2 and all(ex in expected["train"] for ex in batch)
    assert all(task.verifier(ex, ex.response) for ex in task.train_examples())


def test_the_tfds_builder_class_writes_the_same_dataset(manual_dir, tmp_path):
    data_dir = str(tmp_path / "tfds")
    path = gsm8k.build_tfds(str(manual_dir), data_dir)
    assert path == tfds_io.dataset_dir(data_dir, "gsm8k")
    assert sorted(p.name for p in (tmp_path / "tfds").iterdir()) == ["gsm8k"]  # no downloads/
    splits = tfds_io.load_splits(data_dir, "gsm8k")
    read = {s: tfds_io.eval_examples(src) for s, src in splits.items()}
    assert read == gsm8k.gsm8k_splits(manual_dir)
    (manual_dir / "train.jsonl").unlink()
    with pytest.raises(ValueError, match="train.jsonl is missing"):
        gsm8k.build_tfds(str(manual_dir), str(tmp_path / "other"))


def test_the_prepare_cli(manual_dir, tmp_path, capsys):
    data_dir = str(tmp_path / "tfds")
    argv = ["--source", "gsm8k", "--manual_dir", str(manual_dir)]
    path = prepare_lib.prepare([*argv, "--name", "g8", "--data_dir", data_dir])
    assert "train 3, test 1 records" in capsys.readouterr().out
    splits = tfds_io.load_splits(data_dir, "g8")
    assert tfds_io.eval_examples(splits["test"]) == gsm8k.gsm8k_splits(manual_dir)["test"]
    assert path == tfds_io.dataset_dir(data_dir, "g8")
    bad = {
        "needs --manual_dir": ["--source", "gsm8k"],
        "takes only --manual_dir": [*argv, "--train", "t.jsonl"],
        "--manual_dir is for --source gsm8k": ["--source", "arith", "--manual_dir", "x"],
    }
    for message, args in bad.items():
        with pytest.raises(ValueError, match=message):
            prepare_lib.prepare([*args, "--name", "g9", "--data_dir", data_dir])
    (manual_dir / "test.jsonl").unlink()
    with pytest.raises(SystemExit) as exit_info:
        prepare_lib.main([*argv, "--name", "g9", "--data_dir", data_dir])
    assert exit_info.value.code == 1
    assert "test.jsonl is missing" in capsys.readouterr().err


def test_the_jsonl_conversion_reads_back(manual_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    gsm8k.main(["--manual_dir", str(manual_dir), "--out_dir", str(out_dir)])
    assert str(out_dir / "train.jsonl") in capsys.readouterr().out
    expected = gsm8k.gsm8k_splits(manual_dir)
    for split in ("train", "test"):
        read = jsonl.read_jsonl(out_dir / f"{split}.jsonl")
        assert read == _without_hardness(expected[split])  # JSONL keeps no hardness
    row = json.loads((out_dir / "test.jsonl").read_text().splitlines()[0])
    assert set(row) == {"prompt", "privileged", "response", "answer", "domain"}
    assert set(row["privileged"]) == set(gsm8k.FORMS)
    spec = sources.TaskSpec(
        source="jsonl",
        train_path=str(out_dir / "train.jsonl"),
        test_path=str(out_dir / "test.jsonl"),
    )
    assert sources.jsonl_splits(spec)["test"] == _without_hardness(expected["test"])
    with pytest.raises(SystemExit) as exit_info:
        gsm8k.main(["--manual_dir", str(tmp_path / "nowhere"), "--out_dir", str(out_dir)])
    assert exit_info.value.code == 1
    assert "train.jsonl is missing" in capsys.readouterr().err
