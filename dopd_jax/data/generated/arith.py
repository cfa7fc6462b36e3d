"""Multi-step integer arithmetic with a worked solution.

    prompt        Q: 37*4+18=?
    solution       37*4=148 148+18=166 A: 166
    hints          hint: 37*4=a a+18=b        (the plan, no values)
    exec_hints     hint: 148, 166             (values of the plan's steps)
    answer         hint: 166

The wrong strategy is a wrong order of operations (e.g. add before
multiplying: `4+18=a 37*a=b`), executed faithfully; only orders whose answer
differs from the correct one and whose intermediate values stay
non-negative qualify, and a problem without such an order is redrawn, so
misleading and honest examples share one prompt distribution.
Hardness counts carries and borrows along the correct solution.
"""

import dataclasses
import itertools
import random

from dopd_jax.data.generated import problem as problem_lib

_LETTERS = "abcdef"
_OPS = "+-*"


@dataclasses.dataclass(frozen=True)
class ArithDifficulty:
    """Knobs: operation count, operand digits, allowed operators, hard cut."""

    n_ops: int = 2  # operations per problem (>= 2 so orders can differ)
    max_digits: int = 2  # digits of an operand of + and -
    mul_digits: int = 1  # digits of the right-hand factor of each *
    ops: str = _OPS  # operators to draw from; needs "-" or "*"
    hard_min: int = 3  # least carries+borrows of a "hard" problem

    def __post_init__(self):
        if not 2 <= self.n_ops <= len(_LETTERS):
            raise ValueError(f"arith n_ops must be in [2, {len(_LETTERS)}], got {self.n_ops}")
        if not 1 <= self.mul_digits <= self.max_digits:
            raise ValueError(
                f"arith needs 1 <= mul_digits <= max_digits, got "
                f"{self.mul_digits}, {self.max_digits}"
            )
        if not self.ops or set(self.ops) - set(_OPS) or not set(self.ops) & {"-", "*"}:
            raise ValueError(
                f"arith ops must be drawn from {_OPS!r} and contain "
                f"'-' or '*' (else every order agrees), got {self.ops!r}"
            )


def _apply(op: str, left: int, right: int) -> int:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    return left * right


def _step_hardness(op: str, left: int, right: int) -> int:
    if op == "+":
        return problem_lib.add_carries(left, right)
    if op == "-":
        return problem_lib.sub_borrows(left, right)
    return problem_lib.mul_carries(left, right)


def execute(nums: list[int], ops: list[str], order: tuple[int, ...]):
    """Executes the operations in `order` (indices into `ops`).

    Args:
      nums: the n_ops + 1 operands, left to right.
      ops: the n_ops operators.
      order: a permutation of range(n_ops), the order of application.

    Returns:
      (Trace, hardness), or None if an intermediate value is negative.
    """
    vals, names, live = list(nums), [str(n) for n in nums], list(range(len(ops)))
    work, plan, results, hardness = [], [], [], 0
    for step, j in enumerate(order):
        pos = live.index(j)
        left, right, op = vals[pos], vals[pos + 1], ops[j]
        value = _apply(op, left, right)
        if value < 0:
            return None
        hardness += _step_hardness(op, left, right)
        work.append(f"{left}{op}{right}={value}")
        plan.append(f"{names[pos]}{op}{names[pos + 1]}={_LETTERS[step]}")
        vals[pos : pos + 2], names[pos : pos + 2] = [value], [_LETTERS[step]]
        del live[pos]
        results.append(value)
    trace = problem_lib.Trace(
        plan=" ".join(plan),
        values=", ".join(map(str, results)),
        work=" ".join(work),
        answer=str(results[-1]),
    )
    return trace, hardness


def precedence_order(ops: list[str]) -> tuple[int, ...]:
    """Multiplications left to right, then additions/subtractions."""
    muls = [i for i, op in enumerate(ops) if op == "*"]
    return tuple(muls + [i for i, op in enumerate(ops) if op != "*"])


def sample(rng: random.Random, d: ArithDifficulty, keep=lambda prompt: True):
    """Draws one problem, or None if it must be redrawn (see Domain)."""
    ops = [problem_lib.choice(rng, d.ops) for _ in range(d.n_ops)]
    nums = []
    for i in range(d.n_ops + 1):
        digits = d.mul_digits if i > 0 and ops[i - 1] == "*" else d.max_digits
        nums.append(problem_lib.randint(rng, 0, 10**digits - 1))
    expr = "".join(f"{n}{op}" for n, op in zip(nums, ops)) + str(nums[-1])
    if not keep(f"Q: {expr}=?"):
        return None
    order = precedence_order(ops)
    run = execute(nums, ops, order)
    if run is None:
        return None
    correct, hardness = run
    wrong = []
    for other in itertools.permutations(range(d.n_ops)):
        alt = None if other == order else execute(nums, ops, other)
        if alt is not None and alt[0].answer != correct.answer:
            wrong.append(alt[0])
    if not wrong:
        return None
    return problem_lib.Problem(
        prompt=f"Q: {expr}=?",
        correct=correct,
        wrong=problem_lib.choice(rng, wrong),
        hardness=hardness,
    )


DOMAIN = problem_lib.Domain(
    name="arith", difficulty_cls=ArithDifficulty, sample=sample, answer_pattern=r"-?\d+"
)
