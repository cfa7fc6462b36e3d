"""Solve a linear equation a*x+b=c (or a*x-b=c) for a positive integer x.

    prompt        Q: 3*x+7=25
    solution       25-7=18 18/3=6 A: 6
    hints          hint: 25-7=a a/3=b
    exec_hints     hint: 18, 6
    answer         hint: 6

The skill is undoing the equation: a subtraction (or addition) and an exact
long division. Wrong strategies, executed faithfully: multiply instead of
dividing (always available), undo b with the wrong sign, or divide before
undoing b; the last two only when every step stays a non-negative integer.
Hardness counts carries/borrows of the first step plus the non-zero
running remainders of the long division.
"""

import dataclasses
import random

from dopd_jax.data.generated import problem as problem_lib


@dataclasses.dataclass(frozen=True)
class LinearDifficulty:
    """Knobs: digits of the coefficient, of x and of the constant b."""

    coef_digits: int = 1  # a in [2, 10**coef_digits - 1]
    x_digits: int = 2  # x in [1, 10**x_digits - 1]
    b_digits: int = 2  # b in [1, 10**b_digits - 1]
    signs: str = "+-"  # signs of b to draw from
    hard_min: int = 4  # least carries+borrows+remainders of a "hard" one

    def __post_init__(self):
        for name in ("coef_digits", "x_digits", "b_digits"):
            if not 1 <= getattr(self, name) <= 4:
                raise ValueError(f"linear {name} must be in [1, 4], got {getattr(self, name)}")
        if not self.signs or set(self.signs) - {"+", "-"}:
            raise ValueError(f"linear signs must be drawn from '+-', got {self.signs!r}")


def div_remainders(dividend: int, divisor: int) -> int:
    """Non-zero running remainders of the schoolbook long division."""
    rem = count = 0
    for digit in str(dividend):
        rem = (rem * 10 + int(digit)) % divisor
        count += int(rem > 0)
    return count


def _apply(op: str, left: int, right: int) -> int | None:
    """left op right, or None unless it is a non-negative integer."""
    if op == "/":
        return None if left % right else left // right
    value = {"+": left + right, "-": left - right, "*": left * right}[op]
    return value if value >= 0 else None


def _trace(left: int, op1: str, right: int, op2: str, second: int):
    """Trace of `left op1 right = u` then `u op2 second = v`, or None."""
    u = _apply(op1, left, right)
    v = None if u is None else _apply(op2, u, second)
    if v is None:
        return None
    return problem_lib.Trace(
        plan=f"{left}{op1}{right}=a a{op2}{second}=b",
        values=f"{u}, {v}",
        work=f"{left}{op1}{right}={u} {u}{op2}{second}={v}",
        answer=str(v),
    )


def sample(rng: random.Random, d: LinearDifficulty, keep=lambda prompt: True):
    """Draws one problem, or None if it must be redrawn (see Domain)."""
    a = problem_lib.randint(rng, 2, 10**d.coef_digits - 1)
    x = problem_lib.randint(rng, 1, 10**d.x_digits - 1)
    b = problem_lib.randint(rng, 1, 10**d.b_digits - 1)
    sign = problem_lib.choice(rng, d.signs)
    c = a * x + b if sign == "+" else a * x - b
    prompt = f"Q: {a}*x{sign}{b}={c}"
    if c < 0 or not keep(prompt):
        return None
    undo, wrong_undo = ("-", "+") if sign == "+" else ("+", "-")
    correct = _trace(c, undo, b, "/", a)
    candidates = [
        _trace(c, undo, b, "*", a),
        _trace(c, wrong_undo, b, "/", a),
        _trace(c, "/", a, undo, b),
    ]
    wrong = [t for t in candidates if t is not None and t.answer != correct.answer]
    if not wrong:
        return None
    first = problem_lib.sub_borrows(c, b) if undo == "-" else problem_lib.add_carries(c, b)
    return problem_lib.Problem(
        prompt=prompt,
        correct=correct,
        wrong=problem_lib.choice(rng, wrong),
        hardness=first + div_remainders(a * x, a),
    )


DOMAIN = problem_lib.Domain(
    name="linear", difficulty_cls=LinearDifficulty, sample=sample, answer_pattern=r"-?\d+"
)
