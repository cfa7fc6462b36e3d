"""Built-in verifiers, user verifiers by import path, and answer checks."""

from __future__ import annotations

from decimal import Decimal

import pytest

from dopd_jax.data.example import Example
from dopd_jax.data.verifiers import (
    VERIFIERS,
    check_answers,
    get_verifier,
    last_boxed,
    last_number,
    normalize_math,
)


def _ex(answer: str | None) -> Example:
    return Example(prompt="Q: ?", answer=answer)


@pytest.mark.parametrize(
    "answer, response, ok",
    [
        ("166", " 166 ", True),
        (" 166\n", "166", True),
        ("166", "A: 166", False),
        ("166", "1666", False),
    ],
)
def test_exact(answer, response, ok):
    assert get_verifier("exact")(_ex(answer), response) is ok


@pytest.mark.parametrize(
    "answer, response, ok",
    [
        ("166", " 37*4=148 148+18=166 A: 166", True),
        ("166", "A: 12 no wait A:  166 ", True),
        ("166", "A: 166 then A: 12", False),
        ("166", "A: 166\nmore text", True),
        ("166", "A: 166 apples", False),
        ("166", "the answer is 166", False),
        ("224579", "2 2 4 5 7 9 A: 224579", True),
    ],
)
def test_marker(answer, response, ok):
    assert get_verifier("marker")(_ex(answer), response) is ok


@pytest.mark.parametrize(
    "answer, response, ok",
    [
        ("3", "so it is 3.0", True),
        ("1000", "total: 1,000 apples", True),
        ("1,000", "1000", True),
        ("1234567", "1,234,567.", True),
        ("-5", "x = -5", True),
        ("18", "25-7=18", True),
        ("0.5", "first 2, then .5 or 0.50", True),
        ("7", "7 then 8", False),
        ("7", "no number here", False),
        ("-5", "5", False),
    ],
)
def test_last_number(answer, response, ok):
    assert get_verifier("last_number")(_ex(answer), response) is ok


def test_last_number_parsing():
    assert last_number("25-7=18") == Decimal(18)
    assert last_number("a (-3)") == Decimal(-3)
    assert last_number("x-3") == Decimal(3)
    assert last_number("1,0000") == Decimal(0)
    assert last_number("none") is None


def test_last_number_answer_without_number_raises():
    with pytest.raises(ValueError, match="contains no number"):
        get_verifier("last_number")(_ex("seven"), "7")


@pytest.mark.parametrize(
    "answer, response, ok",
    [
        ("\\frac{1}{2}", "so \\boxed{\\dfrac{1}{2}}.", True),
        ("\\boxed{\\frac{1}{2}}", "\\boxed{\\tfrac{1}{2}}", True),
        ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt{3}}{2}}", True),
        ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt{2}}{2}}", False),
        ("(1, 2)", "\\boxed{\\left( 1,2 \\right)}", True),
        ("5", "\\boxed{5.0}", True),
        ("1000", "\\boxed{1,000}", True),
        ("90", "\\boxed{90^\\circ}", True),
        ("90", "\\boxed{90^{\\circ}}", True),
        ("10", "\\boxed{\\text{10}}", True),
        ("x+1", "\\boxed{$x + 1$}", True),
        ("3", "\\boxed{3\\!}.", True),
        ("3", "\\boxed{4} then \\boxed{3}", True),
        ("4", "\\boxed{4} then \\boxed{3}", False),
        ("3", "the answer is 3", False),
        ("3", "\\boxed{3", False),
    ],
)
def test_boxed(answer, response, ok):
    assert get_verifier("boxed")(_ex(answer), response) is ok


def test_boxed_helpers():
    assert last_boxed("a \\boxed{\\frac{a}{\\sqrt{b}}} b") == "\\frac{a}{\\sqrt{b}}"
    assert last_boxed("no box") is None
    assert normalize_math(" \\dfrac{1}{2}. ") == "\\frac{1}{2}"
    assert normalize_math("3.0") == normalize_math("3")
    assert normalize_math("\\text{cm}\\,2") == "cm2"


@pytest.mark.parametrize("name", sorted(VERIFIERS))
def test_missing_answer_raises(name):
    with pytest.raises(ValueError, match="no answer"):
        VERIFIERS[name](_ex(None), "A: 1 \\boxed{1}")


def test_check_answers_names_first_missing_index():
    check_answers([_ex("1"), _ex("2")], "eval data")
    with pytest.raises(ValueError, match=r"eval data: example index 1 has no answer"):
        check_answers([_ex("1"), _ex(None), _ex(None)], "eval data")


def test_user_verifier_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_verifiers.py").write_text(
        "def starts(example, text):\n"
        "    return text.startswith(example.answer)\n"
        "NOT_A_FUNCTION = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    verify = get_verifier("my_verifiers:starts")
    assert verify(_ex("ab"), "abc") and not verify(_ex("ab"), "cab")
    with pytest.raises(ValueError, match="not a function"):
        get_verifier("my_verifiers:NOT_A_FUNCTION")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        get_verifier("my_verifiers:missing")


def test_bad_import_path():
    with pytest.raises(ValueError, match="verifier import path 'no_such_mod_x:f'.*cannot import"):
        get_verifier("no_such_mod_x:f")
    with pytest.raises(ValueError, match="must look like 'package.module:NAME'"):
        get_verifier("mod:")


def test_unknown_verifier_lists_names():
    with pytest.raises(ValueError) as e:
        get_verifier("regex")
    for name in VERIFIERS:
        assert repr(name) in str(e.value)
    assert "package.module:NAME" in str(e.value)
