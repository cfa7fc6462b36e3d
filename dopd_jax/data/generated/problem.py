"""Building blocks shared by the task domains: traces, problems, seeded draws.

A domain draws a `Problem`: one prompt with two ways of solving it, the
correct `Trace` and a plausible wrong one (a wrong strategy, executed
faithfully). Privileged information is rendered from one of the two traces,
so every privileged form of a misleading example tells the same wrong story
and the privileged teacher's target (`priv_response`) executes it.

Randomness uses only `random.Random(str_seed).random()`: Python guarantees
that both string seeding and the `random()` stream stay the same across
versions, unlike `randrange`/`choice` or NumPy's `Generator` streams, so the
generated data sets are reproducible across interpreter and library updates.
"""

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Trace:
    """One way of solving a problem, as the four renderings need it."""

    plan: str  # strategy without execution, e.g. "37*4=a a+18=b"
    values: str  # executed intermediate values, e.g. "148, 166"
    work: str  # worked solution body, e.g. "37*4=148 148+18=166"
    answer: str  # final answer, e.g. "166"


@dataclasses.dataclass(frozen=True)
class Problem:
    """A drawn problem: prompt, correct and wrong traces, a hardness score."""

    prompt: str
    correct: Trace
    wrong: Trace  # its answer always differs from the correct one
    hardness: int  # domain-specific count (carries, borrows, repeats...)


@dataclasses.dataclass(frozen=True)
class Domain:
    """A task domain: its difficulty knobs and its problem sampler.

    `sample(rng, difficulty, keep)` returns a `Problem`, or None when the draw
    is rejected: its prompt fails `keep(prompt)` (checked before any solving,
    since most draws are routed to another split) or no valid wrong strategy
    exists. The caller redraws.
    `difficulty_cls` is a frozen dataclass whose `hard_min` field is the least
    hardness of a problem in the "hard" split.
    """

    name: str
    difficulty_cls: type
    sample: Callable[[random.Random, Any, Callable[[str], bool]], Problem | None]
    answer_pattern: str  # regex of the answer after "A:"


def randint(rng: random.Random, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] from `rng.random()` only (see module doc)."""
    return lo + min(int(rng.random() * (hi - lo + 1)), hi - lo)


def choice(rng: random.Random, items: Sequence[Any]) -> Any:
    """Uniform element of a non-empty sequence from `rng.random()` only."""
    return items[randint(rng, 0, len(items) - 1)]


def make_difficulty(cls: type, overrides: Any) -> Any:
    """Builds a difficulty dataclass from None, an instance, or a mapping.

    Args:
      cls: the domain's frozen difficulty dataclass.
      overrides: None (defaults), an instance of `cls`, or a mapping of field
        names to values.

    Returns:
      An instance of `cls`.
    """
    if overrides is None:
        return cls()
    if isinstance(overrides, cls):
        return overrides
    if not isinstance(overrides, Mapping):
        raise ValueError(
            f"difficulty must be None, a {cls.__name__} or a mapping, "
            f"got {type(overrides).__name__}"
        )
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown difficulty field(s) {unknown} for {cls.__name__}; valid: {valid}"
        )
    return cls(**dict(overrides))


def digits_of(n: int) -> list[int]:
    """Decimal digits of a non-negative integer, least significant first."""
    return [int(c) for c in reversed(str(n))]


def add_carries(a: int, b: int) -> int:
    """Number of column carries in the schoolbook sum a + b (a, b >= 0)."""
    da, db = digits_of(a), digits_of(b)
    carry = count = 0
    for i in range(max(len(da), len(db))):
        total = (da[i] if i < len(da) else 0) + (db[i] if i < len(db) else 0)
        carry = int(total + carry >= 10)
        count += carry
    return count


def sub_borrows(a: int, b: int) -> int:
    """Number of column borrows in the schoolbook difference a - b (a >= b)."""
    da, db = digits_of(a), digits_of(b)
    borrow = count = 0
    for i, digit in enumerate(da):
        borrow = int(digit - (db[i] if i < len(db) else 0) - borrow < 0)
        count += borrow
    return count


def mul_carries(a: int, b: int) -> int:
    """Non-zero carries when the larger factor is multiplied digit by digit."""
    big, small = max(a, b), min(a, b)
    count = 0
    for d in digits_of(small):
        carry = 0
        for digit in digits_of(big):
            carry = (digit * d + carry) // 10
            count += int(carry > 0)
    return count
