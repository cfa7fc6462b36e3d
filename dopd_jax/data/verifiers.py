"""Verifiers: ``verify(example, response_text) -> bool`` against ``example.answer``.

Built-ins, registered in ``VERIFIERS`` by name:

    exact        the whole response, stripped, equals the answer
    marker       the rest of the line after the last ``A:`` equals the answer
    last_number  the last number in the response equals the answer's, numerically
    boxed        the last ``\\boxed{...}``, normalised as math benchmarks do

``get_verifier`` also accepts ``package.module:NAME`` for a user function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal

from dopd_jax.data.example import Example
from dopd_jax.plugins import is_import_path, load_object

Verifier = Callable[[Example, str], bool]

# An optional minus (not after a word character or closing bracket, so "25-7" is
# 25 and 7), then 1,234-style thousands groups or plain digits, then decimals.
_DIGITS = r"(?:\d{1,3}(?:,\d{3}(?!\d))+|\d+)(?:\.\d+)?"
_NUMBER = re.compile(r"(?:(?<![\w)\]])-)?" + _DIGITS)
_PLAIN_NUMBER = re.compile("-?" + _DIGITS)
_TEXT = re.compile(r"\\(?:text|textrm|mbox)\{([^{}]*)\}")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_BOXED = "\\boxed{"


def _answer(example: Example, verifier: str) -> str:
    """The example's answer, or ValueError when its source gave none."""
    if example.answer is None:
        raise ValueError(
            f"verifier {verifier!r}: example has no answer (prompt "
            f"{example.prompt[:60]!r}); its task source provides no "
            "reference answers, so it cannot be verified"
        )
    return example.answer


def _to_decimal(number: str) -> Decimal:
    """``"1,234.50"`` -> ``Decimal("1234.50")``."""
    return Decimal(number.replace(",", ""))


def last_number(text: str) -> Decimal | None:
    """The last number in ``text`` (thousands separators dropped), or None.

    Args:
      text: any text, e.g. ``"so x = -1,250.5 apples"``.

    Returns:
      The number as a Decimal (``Decimal("-1250.5")``), or None if there is none.
    """
    numbers = _NUMBER.findall(text)
    return _to_decimal(numbers[-1]) if numbers else None


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (nested braces kept).

    Args:
      text: e.g. ``"so \\boxed{\\frac{1}{2}}."``.

    Returns:
      The content (``"\\frac{1}{2}"``), or None if the last box is missing or unclosed.
    """
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth = 0
    for i in range(start + len(_BOXED) - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + len(_BOXED) : i]
    return None


def normalize_math(text: str) -> str | Decimal:
    """A math answer normalised for comparison, as benchmark scorers do.

    Drops whitespace, ``$``, ``\\left``/``\\right``, ``\\!``, ``\\,``, a trailing
    ``.`` and degree marks; unwraps ``\\text{...}``; maps ``\\dfrac``/``\\tfrac``
    to ``\\frac``.

    Args:
      text: e.g. ``" \\dfrac{1}{2}. "`` or ``"1,000"``.

    Returns:
      A Decimal when the result is a plain number, else the normalised string.
    """
    s = text.replace("\\!", "").replace("\\,", "")
    s = re.sub(r"\s+", "", s).replace("$", "")
    s = _LEFT_RIGHT.sub("", s)
    while _TEXT.search(s):
        s = _TEXT.sub(r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.rstrip(".")
    return _to_decimal(s) if _PLAIN_NUMBER.fullmatch(s) else s


def verify_exact(example: Example, response_text: str) -> bool:
    """True if the stripped response equals the stripped answer."""
    return response_text.strip() == _answer(example, "exact").strip()


def verify_marker(example: Example, response_text: str) -> bool:
    """True if the rest of the line after the last ``A:`` equals the answer (stripped)."""
    answer = _answer(example, "marker").strip()
    _, sep, tail = response_text.rpartition("A:")
    if not sep:
        return False
    return tail.split("\n", 1)[0].strip() == answer


def verify_last_number(example: Example, response_text: str) -> bool:
    """True if the response's last number equals the answer's number numerically."""
    answer = _answer(example, "last_number")
    expected = last_number(answer)
    if expected is None:
        raise ValueError(
            f"verifier 'last_number': answer {answer!r} contains no number "
            f"(prompt {example.prompt[:60]!r})"
        )
    got = last_number(response_text)
    return got is not None and got == expected


def verify_boxed(example: Example, response_text: str) -> bool:
    """True if the last ``\\boxed{}`` equals the answer (bare or boxed) after normalising."""
    answer = _answer(example, "boxed")
    boxed_answer = last_boxed(answer)
    got = last_boxed(response_text)
    if got is None:
        return False
    return normalize_math(got) == normalize_math(answer if boxed_answer is None else boxed_answer)


VERIFIERS: dict[str, Verifier] = {
    "exact": verify_exact,
    "marker": verify_marker,
    "last_number": verify_last_number,
    "boxed": verify_boxed,
}


def get_verifier(name_or_path: str) -> Verifier:
    """The verifier registered as ``name_or_path``, or a user one at an import path.

    Args:
      name_or_path: a key of ``VERIFIERS`` or ``"package.module:NAME"``.

    Returns:
      A function ``verify(example, response_text) -> bool``.

    Raises:
      ValueError: unknown name, bad import path, or the object is not callable.
    """
    if name_or_path in VERIFIERS:
        return VERIFIERS[name_or_path]
    if not is_import_path(name_or_path):
        raise ValueError(
            f"unknown verifier {name_or_path!r}; valid names are "
            f"{sorted(VERIFIERS)}, or give a user function as "
            "'package.module:NAME'"
        )
    fn = load_object(name_or_path, "verifier")
    if not callable(fn):
        raise ValueError(
            f"verifier import path {name_or_path!r} names a "
            f"{type(fn).__name__}, not a function verify(example, response_text)"
        )
    return fn


def check_answers(examples: Sequence[Example], where: str) -> None:
    """Raises ValueError naming the first example without an answer.

    Args:
      examples: the examples a verifier will score.
      where: what they are, for the message (e.g. ``"eval data data/test.jsonl"``).
    """
    for i, ex in enumerate(examples):
        if ex.answer is None:
            raise ValueError(
                f"{where}: example index {i} has no answer (prompt "
                f"{ex.prompt[:60]!r}); verifiers need a reference answer "
                "for every example"
            )
