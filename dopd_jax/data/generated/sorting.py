"""Sort a list of digits in ascending order.

    prompt        sort: 7 2 9 4 2 5
    solution       2 2 4 5 7 9 A: 224579
    hints          hint: smallest first
    exec_hints     hint: 2 2 4                (the first half of the output)
    answer         hint: 224579

The wrong strategy is the opposite order ("largest first"), executed
faithfully; a list whose digits are all equal has no wrong answer and is
redrawn. Hardness counts repeated digits (length minus distinct digits):
repeats are where small sorting models drop or duplicate items, and the
count changes nothing about the sequence length.
"""

import dataclasses
import random

from dopd_jax.data.generated import problem as problem_lib


@dataclasses.dataclass(frozen=True)
class SortDifficulty:
    """Knobs: list length and the hard cut on repeated digits."""

    n_items: int = 6  # digits per list
    hard_min: int = 2  # least repeated digits of a "hard" problem

    def __post_init__(self):
        if not 2 <= self.n_items <= 12:
            raise ValueError(f"sort n_items must be in [2, 12], got {self.n_items}")


def _trace(items: list[int], descending: bool) -> problem_lib.Trace:
    ordered = sorted(items, reverse=descending)
    half = ordered[: (len(ordered) + 1) // 2]
    return problem_lib.Trace(
        plan="largest first" if descending else "smallest first",
        values=" ".join(map(str, half)),
        work=" ".join(map(str, ordered)),
        answer="".join(map(str, ordered)),
    )


def sample(rng: random.Random, d: SortDifficulty, keep=lambda prompt: True):
    """Draws one problem, or None if it must be redrawn (see Domain)."""
    items = [problem_lib.randint(rng, 0, 9) for _ in range(d.n_items)]
    prompt = "sort: " + " ".join(map(str, items))
    if len(set(items)) == 1 or not keep(prompt):
        return None
    return problem_lib.Problem(
        prompt=prompt,
        correct=_trace(items, descending=False),
        wrong=_trace(items, descending=True),
        hardness=len(items) - len(set(items)),
    )


DOMAIN = problem_lib.Domain(
    name="sort", difficulty_cls=SortDifficulty, sample=sample, answer_pattern=r"\d+"
)
