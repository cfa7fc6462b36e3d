"""Tests for the TFDS array_record task data and its grain training iterator.

One small dataset is written once per module (TFDS writing costs ~0.2 s a
call); the iterator tests read it through the real TFDS data source.
"""

from __future__ import annotations

import json
import os
import types

import pytest

from dopd_jax.data import grain_iterator, tfds_io
from dopd_jax.data import prepare as prepare_lib
from dopd_jax.data.example import Example

N_TRAIN = 10
BATCH = 4


def _train_examples() -> list[Example]:
    return [
        Example(
            prompt=f"Q: {i}+1=?",
            privileged={"none": "", "answer": f" hint: {i + 1}"},
            response=f" {i}+1={i + 1} A: {i + 1}",
            answer=str(i + 1),
            domain="arith",
            hardness=i % 3,
        )
        for i in range(N_TRAIN)
    ]


TEST_EXAMPLES = [
    Example(
        prompt="Q: ünïcode ✓ + newline\n?",
        privileged={
            "none": "",
            "hints": " hint: add",
            "exec_hints": " hint: 2+2=4",
            "answer": " hint: 4",
        },
        response=" 2+2=4 A: 4",
        answer="4",
        domain="arith",
        priv_response=" 2*2=4 A: 4",
        misleading=True,
        hardness=7,
    ),
    Example(prompt="Q: no references"),  # every optional field None
    Example(prompt="Q: empty strings", response="", answer="", priv_response=""),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    tfds_io.write_dataset(
        {"train": _train_examples(), "test": TEST_EXAMPLES},
        name="toy",
        data_dir=str(root),
        description="test data",
    )
    return str(root)


@pytest.fixture(scope="module")
def splits(data_dir):
    return tfds_io.load_splits(data_dir, "toy")


def _iterator(splits, seed=3, batch_size=BATCH, **kwargs):
    return grain_iterator.TrainIterator(splits["train"], batch_size, seed, **kwargs)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_round_trip_keeps_order_none_and_privileged_forms(data_dir, splits):
    path = tfds_io.dataset_dir(data_dir, "toy")
    files = sorted(os.listdir(path))
    assert "dataset_info.json" in files and "features.json" in files
    assert any(f.startswith("toy-train.array_record-") for f in files)
    assert sorted(splits) == ["test", "train"]
    assert tfds_io.eval_examples(splits["test"]) == TEST_EXAMPLES
    assert tfds_io.eval_examples(splits["train"]) == _train_examples()
    assert tfds_io.to_example(splits["test"][1]).response is None
    assert tfds_io.to_example(splits["test"][2]).response == ""


def test_existing_dataset_is_refused_unless_overwrite(tmp_path):
    tfds_io.write_dataset({"train": TEST_EXAMPLES}, name="once", data_dir=str(tmp_path))
    path = tfds_io.dataset_dir(str(tmp_path), "once")
    with pytest.raises(ValueError, match=path):
        tfds_io.write_dataset({"train": TEST_EXAMPLES[:1]}, name="once", data_dir=str(tmp_path))
    tfds_io.write_dataset(
        {"train": TEST_EXAMPLES[:1]}, name="once", data_dir=str(tmp_path), overwrite=True
    )
    assert tfds_io.eval_examples(tfds_io.load_splits(str(tmp_path), "once")["train"]) == [
        TEST_EXAMPLES[0]
    ]


@pytest.mark.parametrize(
    "splits_arg, match",
    [
        ({"train": []}, "split 'train' has no examples"),
        ({"train": ["not an example"]}, "split 'train' record 0"),
        ({"Bad-Split": TEST_EXAMPLES}, "split name 'Bad-Split'"),
    ],
)
def test_write_rejects_bad_splits(tmp_path, splits_arg, match):
    with pytest.raises(ValueError, match=match):
        tfds_io.write_dataset(splits_arg, name="bad", data_dir=str(tmp_path))


def test_missing_dataset_names_the_directory(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "nope")):
        tfds_io.load_splits(str(tmp_path), "nope")


def test_iterator_is_deterministic_and_reshuffles_each_epoch(splits):
    first = _take(_iterator(splits), 5)
    assert first == _take(_iterator(splits), 5)
    assert first != _take(_iterator(splits, seed=4), 5)
    assert all(len(batch) == BATCH and isinstance(batch[0], Example) for batch in first)
    stream = [ex.prompt for batch in first for ex in batch]
    everything = sorted(ex.prompt for ex in _train_examples())
    assert sorted(stream[:N_TRAIN]) == everything == sorted(stream[N_TRAIN : 2 * N_TRAIN])
    assert stream[:N_TRAIN] != stream[N_TRAIN : 2 * N_TRAIN]


def test_resume_from_json_state_is_exact_across_epochs(splits):
    uninterrupted = _iterator(splits)
    _take(uninterrupted, 2)
    state = json.loads(json.dumps(uninterrupted.get_state()))
    expected = _take(uninterrupted, 5)  # records 8..27: crosses two epoch ends
    resumed = _iterator(splits)
    resumed.set_state(state)
    assert _take(resumed, 5) == expected
    assert state["dataset"] == {
        "name": "toy",
        "split": "train",
        "num_records": N_TRAIN,
        "seed": 3,
        "batch_size": BATCH,
    }


def test_processes_split_each_global_batch(splits):
    whole = _take(_iterator(splits), 4)
    parts = [_take(_iterator(splits, process_index=i, process_count=2), 4) for i in range(2)]
    assert all(len(batch) == BATCH // 2 for batch in parts[0])
    assert [a + b for a, b in zip(*parts)] == whole


def test_state_resumes_under_another_process_count(splits):
    single = _iterator(splits)
    _take(single, 3)
    state = json.loads(json.dumps(single.get_state()))
    second = _iterator(splits, process_index=1, process_count=2)
    second.set_state(state)
    assert next(second) == next(single)[BATCH // 2 :]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"seed": 5}, "seed"),
        ({"batch_size": 2}, "batch_size"),
        ({"name": "other"}, "name"),
        ({"split": "test"}, "split"),
    ],
)
def test_mismatching_state_is_refused(splits, kwargs, field):
    state = json.loads(json.dumps(_iterator(splits).get_state()))
    with pytest.raises(ValueError, match=f"{field}="):
        _iterator(splits, **kwargs).set_state(state)


def test_mismatching_record_count_is_refused(splits):
    state = _iterator(splits).get_state()
    state["dataset"]["num_records"] += 1
    with pytest.raises(ValueError, match="num_records="):
        _iterator(splits).set_state(state)


def test_state_of_another_worker_count_is_refused(splits):
    state = _iterator(splits).get_state()
    state["worker_count"] = 2
    with pytest.raises(ValueError, match="worker_count=2"):
        _iterator(splits).set_state(state)


def test_iterator_rejects_bad_batch_size(splits):
    with pytest.raises(ValueError, match="divisible by process_count 3"):
        _iterator(splits, process_count=3)


def test_from_generated_accepts_the_old_field_names():
    old = types.SimpleNamespace(
        domain="sort",
        prompt="Q: sort 3 1",
        privileged={"none": ""},
        solution=" 1 3 A: 1 3",
        answer="1 3",
        misleading=True,
        priv_solution=" 3 1 A: 3 1",
        hardness=2,
    )
    ex = prepare_lib._from_generated(old)
    assert (ex.response, ex.priv_response, ex.misleading, ex.hardness) == (
        " 1 3 A: 1 3",
        " 3 1 A: 3 1",
        True,
        2,
    )
    assert prepare_lib._from_generated(ex) is ex


def test_prepare_generated_source(tmp_path, capsys):
    argv = [
        "--source",
        "arith",
        "--name",
        "gen",
        "--data_dir",
        str(tmp_path),
        "--n_train",
        "12",
        "--n_test",
        "3",
        "--seed",
        "1",
        "--misleading_fraction",
        "0.5",
    ]
    path = prepare_lib.prepare(argv)
    assert path == tfds_io.dataset_dir(str(tmp_path), "gen")
    assert "train 12, test 3, hard 3 records" in capsys.readouterr().out
    loaded = tfds_io.load_splits(str(tmp_path), "gen")
    assert {split: len(source) for split, source in loaded.items()} == {
        "train": 12,
        "test": 3,
        "hard": 3,
    }
    train = tfds_io.eval_examples(loaded["train"])
    assert all(ex.domain == "arith" and ex.response and ex.priv_response for ex in train)
    assert any(ex.misleading for ex in train)
    with pytest.raises(ValueError, match="already exists"):
        prepare_lib.prepare(argv)


def test_prepare_jsonl_source_with_an_extra_eval_split(tmp_path):
    files = {}
    for split, n in (("train", 3), ("test", 2), ("test2", 1)):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text(
            "".join(json.dumps({"prompt": f"{split} {i}", "answer": i}) + "\n" for i in range(n))
        )
    prepare_lib.prepare(
        [
            "--source",
            "jsonl",
            "--train",
            str(files["train"]),
            "--test",
            str(files["test"]),
            "--test2",
            str(files["test2"]),
            "--name",
            "user",
            "--data_dir",
            str(tmp_path / "d"),
        ]
    )
    loaded = tfds_io.load_splits(str(tmp_path / "d"), "user")
    assert {split: len(source) for split, source in loaded.items()} == {
        "train": 3,
        "test": 2,
        "test2": 1,
    }
    assert tfds_io.eval_examples(loaded["test2"])[0].answer == "0"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--source", "arith", "--name", "x", "--data_dir", "D", "--train", "t.jsonl"],
            "--train is a JSONL file",
        ),
        (
            ["--source", "jsonl", "--name", "x", "--data_dir", "D", "--train", "t.jsonl"],
            "needs --train FILE and --test FILE",
        ),
        (
            ["--source", "jsonl", "--name", "x", "--data_dir", "D", "--n_train", "3"],
            "--n_train apply to generated sources",
        ),
        (["--source", "nope", "--name", "x", "--data_dir", "D"], "invalid choice"),
    ],
)
def test_prepare_argument_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        prepare_lib.prepare(argv)


def test_main_reports_a_missing_file_in_one_line(tmp_path, capsys):
    missing = str(tmp_path / "missing.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        prepare_lib.main(
            [
                "--source",
                "jsonl",
                "--train",
                missing,
                "--test",
                missing,
                "--name",
                "x",
                "--data_dir",
                str(tmp_path),
            ]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and missing in err and err.startswith("prepare: error:")
