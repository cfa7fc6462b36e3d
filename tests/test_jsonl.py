"""Reading, validating and writing user JSONL data."""

from __future__ import annotations

import json

import pytest

from dopd_jax.data.example import Example
from dopd_jax.data.jsonl import read_jsonl, required_fields, write_jsonl


def _write(tmp_path, *lines: str, name: str = "data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_normalises(tmp_path):
    path = _write(
        tmp_path,
        json.dumps(
            {
                "prompt": "  Q: 1+1=?",
                "privileged": "hint: 2",
                "response": "1+1=2 A: 2",
                "answer": " 2 ",
                "domain": "arith",
            }
        ),
        "",
        json.dumps(
            {"prompt": "Q: x", "privileged": {"hints": " h", "answer": "\tA: 3"}, "answer": 3}
        ),
        json.dumps({"prompt": "Q: y", "answer": 2.5}),
    )
    a, b, c = read_jsonl(path)
    assert a == Example(
        prompt="Q: 1+1=?",
        privileged={"none": "", "privileged": " hint: 2"},
        response=" 1+1=2 A: 2",
        answer="2",
        domain="arith",
    )
    assert b.privileged == {"none": "", "hints": " h", "answer": "\tA: 3"}
    assert b.answer == "3" and b.response is None and b.domain == ""
    assert c.privileged == {"none": ""} and c.answer == "2.5"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"answer": "1"}', "missing required key 'prompt'"),
        ('{"prompt": "   "}', "'prompt' must be a non-empty string"),
        ('{"prompt": 5}', "'prompt' must be a string, got int"),
        ('{"prompt": "Q", "answer": [1]}', "'answer' must be a string or a number, got list"),
        ('{"prompt": "Q", "answer": true}', "'answer' must be a string or a number, got bool"),
        ('{"prompt": "Q", "answer": " "}', "'answer' is empty"),
        ('{"prompt": "Q", "response": 1}', "'response' must be a string, got int"),
        ('{"prompt": "Q", "domain": 1}', "'domain' must be a string, got int"),
        ('{"prompt": "Q", "privileged": 1}', "'privileged' must be a non-empty string or"),
        ('{"prompt": "Q", "privileged": ""}', "privileged form 'privileged' must be a non-empty"),
        ('{"prompt": "Q", "privileged": {}}', "'privileged' must be a non-empty string or"),
        ('{"prompt": "Q", "privileged": {"a": 1}}', "privileged form 'a' must be a non-empty"),
        ('{"prompt": "Q", "privileged": {"none": "x"}}', "'none' is reserved"),
        ('{"prompt": "Q", "hint": "x"}', "unknown keys ['hint']; valid keys are ['prompt'"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, '{"prompt": "ok"}', "", line, name="bad_rows.jsonl")
    with pytest.raises(ValueError) as e:
        read_jsonl(path)
    assert "bad_rows.jsonl" in str(e.value)
    assert "line 3" in str(e.value)
    assert message in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read JSONL data file .*nowhere.jsonl"):
        read_jsonl(tmp_path / "nowhere.jsonl")


def test_no_rows(tmp_path):
    path = _write(tmp_path, "", "  ", name="empty.jsonl")
    with pytest.raises(ValueError, match="empty.jsonl' has no rows"):
        read_jsonl(path)


def test_round_trip(tmp_path):
    examples = [
        Example(
            prompt="Q: 1+1=?",
            privileged={"none": "", "privileged": " hint: 2"},
            response=" A: 2",
            answer="2",
            domain="arith",
        ),
        Example(prompt="Q: é\u2028\x85", privileged={"none": "", "hints": " h", "answer": "\nA"}),
        Example(prompt="Q", privileged={"none": "", "answer": " 3"}, answer="3"),
        Example(prompt="Q", response=""),
    ]
    path = tmp_path / "out.jsonl"
    write_jsonl(path, examples)
    assert read_jsonl(path) == examples
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["privileged"] == " hint: 2"
    assert rows[1]["privileged"] == {"hints": " h", "answer": "\nA"}
    assert rows[3] == {"prompt": "Q", "response": ""}


def test_required_fields(tmp_path):
    path = _write(
        tmp_path,
        json.dumps({"prompt": "Q1", "privileged": "p", "response": "y", "answer": "1"}),
        json.dumps({"prompt": "Q2", "answer": "2"}),
    )
    examples = read_jsonl(path)
    required_fields(examples, ["answer"], "eval")
    required_fields(examples[:1], ["privileged", "response", "answer"], "dopd")
    for field in ("privileged", "response"):
        with pytest.raises(ValueError) as e:
            required_fields(examples, ["answer", field], "method dopd on data.jsonl")
        assert str(e.value).startswith(
            "method dopd on data.jsonl: needs field "
            f"{field!r} in every example, but example index 1"
        )
    with pytest.raises(ValueError, match="unknown required field 'hints'; valid are"):
        required_fields(examples, ["hints"], "x")
    with pytest.raises(ValueError, match="needs field 'answer'.*example index 0"):
        required_fields([Example(prompt="Q")], ["answer"], "eval")
