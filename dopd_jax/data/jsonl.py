"""User data as JSON Lines: one object per line, read into ``Example`` records.

Keys: ``prompt`` (required, non-empty string); optional ``answer`` (string or
number), ``privileged`` (a string, the form ``"privileged"``, or an object of
form name -> string), ``response`` (the gold solution) and ``domain``. Texts are
normalised to the segment convention of ``example.py``: the prompt loses its
leading whitespace, privileged texts and the response gain one leading space.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dopd_jax.data.example import NO_PRIVILEGE, Example

FIELDS = ("prompt", "answer", "privileged", "response", "domain")
PRIVILEGED_FORM = "privileged"  # the form name of a plain-string ``privileged``
_LINE_BREAKS = ("\x85", "\u2028", "\u2029")  # line breaks json.dumps leaves raw

_HAS_FIELD: dict[str, Callable[[Example], bool]] = {
    "privileged": lambda ex: any(form != NO_PRIVILEGE for form in ex.privileged),
    "response": lambda ex: ex.response is not None,
    "answer": lambda ex: ex.answer is not None,
    "domain": lambda ex: bool(ex.domain),
}


def _segment(text: str) -> str:
    """``text`` with one leading space added when non-empty and not starting with whitespace."""
    return text if not text or text[0].isspace() else " " + text


def _optional_str(row: dict[str, Any], key: str, where: str) -> str | None:
    """``row[key]`` when a string, None when absent or null, else ValueError."""
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: key {key!r} must be a string, got {type(value).__name__}")
    return value


def _prompt(row: dict[str, Any], where: str) -> str:
    """The prompt without leading whitespace; ValueError if missing, empty or not a string."""
    if "prompt" not in row:
        raise ValueError(f"{where}: missing required key 'prompt'")
    prompt = _optional_str(row, "prompt", where)
    if prompt is None or not prompt.strip():
        raise ValueError(f"{where}: key 'prompt' must be a non-empty string")
    return prompt.lstrip()


def _answer(row: dict[str, Any], where: str) -> str | None:
    """The stripped answer (a number becomes its ``str``), or None when absent."""
    value = row.get("answer")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(
            f"{where}: key 'answer' must be a string or a number, got {type(value).__name__}"
        )
    answer = str(value).strip()
    if not answer:
        raise ValueError(f"{where}: key 'answer' is empty; omit the key when there is none")
    return answer


def _privileged(row: dict[str, Any], where: str) -> dict[str, str]:
    """Form name -> p text, always with the form ``"none"`` -> ``""``."""
    value = row.get("privileged")
    if value is None:
        return {NO_PRIVILEGE: ""}
    if isinstance(value, str):
        value = {PRIVILEGED_FORM: value}
    if not isinstance(value, dict) or not value:
        raise ValueError(
            f"{where}: key 'privileged' must be a non-empty string or a "
            f"non-empty object of form name -> string, got {value!r:.60}"
        )
    forms = {NO_PRIVILEGE: ""}
    for form, text in value.items():
        if not form.strip():
            raise ValueError(f"{where}: a privileged form name is empty")
        if form == NO_PRIVILEGE:
            raise ValueError(
                f"{where}: privileged form name {NO_PRIVILEGE!r} is reserved "
                "(every example has it, with an empty text)"
            )
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: privileged form {form!r} must be a non-empty string")
        forms[form] = _segment(text)
    return forms


def example_from_row(row: Any, where: str) -> Example:
    """One parsed JSON value as a normalised Example.

    Args:
      row: the value ``json.loads`` gave for one line.
      where: ``"<file>: line <n>"``, prefixed to every error message.

    Returns:
      The Example.

    Raises:
      ValueError: not an object, unknown keys, or a bad value.
    """
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys are {list(FIELDS)}")
    response = _optional_str(row, "response", where)
    return Example(
        prompt=_prompt(row, where),
        privileged=_privileged(row, where),
        response=None if response is None else _segment(response),
        answer=_answer(row, where),
        domain=_optional_str(row, "domain", where) or "",
    )


def _parse(line: str, where: str) -> Any:
    """``json.loads(line)`` with the error naming ``where``."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e


def read_jsonl(path: str | os.PathLike[str]) -> list[Example]:
    """The examples of a JSONL file, one per non-blank line.

    Args:
      path: the file.

    Returns:
      The normalised examples, in file order.

    Raises:
      ValueError: the file is missing or unreadable, has no rows, or a line is bad
        (the message names the file and the 1-based line).
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = list(f)
    except OSError as e:
        raise ValueError(
            f"cannot read JSONL data file {os.fspath(path)!r}: {e.strerror or e}"
        ) from e
    examples = []
    for n, line in enumerate(lines, start=1):
        if line.strip():
            where = f"{os.fspath(path)}: line {n}"
            examples.append(example_from_row(_parse(line, where), where))
    if not examples:
        raise ValueError(f"JSONL data file {os.fspath(path)!r} has no rows")
    return examples


def example_to_row(example: Example) -> dict[str, Any]:
    """The public fields of ``example`` as a JSONL object (inverse of ``example_from_row``).

    Args:
      example: a normalised example; ``priv_response``, ``misleading`` and
        ``hardness`` are not written.

    Returns:
      ``{"prompt": ..., ["privileged": ...], ["answer": ...], ["response": ...],
      ["domain": ...]}``.
    """
    row: dict[str, Any] = {"prompt": example.prompt}
    forms = {k: v for k, v in example.privileged.items() if k != NO_PRIVILEGE}
    if list(forms) == [PRIVILEGED_FORM]:
        row["privileged"] = forms[PRIVILEGED_FORM]
    elif forms:
        row["privileged"] = forms
    optional = {
        "answer": example.answer,
        "response": example.response,
        "domain": example.domain or None,
    }
    row.update({k: v for k, v in optional.items() if v is not None})
    return row


def _dumps(row: dict[str, Any]) -> str:
    """``row`` as one line of JSON, escaping what ``str.splitlines`` would split on."""
    text = json.dumps(row, ensure_ascii=False)
    for char in _LINE_BREAKS:
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def write_jsonl(path: str | os.PathLike[str], examples: Iterable[Example]) -> None:
    """Writes ``examples`` one JSON object a line (UTF-8), so ``read_jsonl`` gives them back.

    Args:
      path: the file to (over)write.
      examples: normalised examples (see ``example_to_row`` for what is kept).
    """
    with open(path, "w", encoding="utf-8") as f:
        for example in examples:
            f.write(_dumps(example_to_row(example)) + "\n")


def required_fields(examples: Sequence[Example], fields: Iterable[str], where: str) -> None:
    """Raises ValueError when some example lacks a field that ``where`` needs.

    Args:
      examples: the data.
      fields: names among ``"privileged"`` (a form other than ``"none"``),
        ``"response"``, ``"answer"`` and ``"domain"``.
      where: who needs them, for the message (e.g. ``"method dopd, data x.jsonl"``).
    """
    for field in fields:
        if field not in _HAS_FIELD:
            raise ValueError(
                f"{where}: unknown required field {field!r}; valid are {sorted(_HAS_FIELD)}"
            )
        missing = next((i for i, ex in enumerate(examples) if not _HAS_FIELD[field](ex)), None)
        if missing is not None:
            raise ValueError(
                f"{where}: needs field {field!r} in every example, but example "
                f"index {missing} has none (prompt "
                f"{examples[missing].prompt[:60]!r})"
            )
