"""Generated tasks with privileged information, splits and verifiers.

Every `Example` has a prompt x, four privileged forms of p (paper Table 4:
none, hints without execution, hints with execution, final answer), the
correct worked solution y ending in ` A: <answer>`, and the target a
privileged teacher is trained on. A configurable fraction of examples is
*misleading*: all their privileged forms describe a wrong strategy
(wrong order of operations, wrong inverse, wrong sort order) and
`priv_response` executes it, so a teacher trained on (x, p, priv_response)
copies wrong hints, as the DOPD routing must detect.

Segment convention (methods.md section 1): x has no leading space; p (when
not empty) and y start with one space. Each segment is tokenized on its own
and the ids are concatenated, so the text of the concatenation is exactly
x + p + y (see `dopd_jax.tokenizer`).

Splits: a stable hash of (domain, prompt) sends 10% of all prompts to
"test" and another 10% to "hard", the rest to "train", so the three never
share a prompt. "hard" keeps only problems with hardness >= the
difficulty's `hard_min`: same operand counts and digits, hence the same
sequence lengths, but more carries, borrows, remainders or repeats.
"""

import random
import re
import zlib
from typing import Any

from dopd_jax.data.example import Example
from dopd_jax.data.generated import arith, linear, sorting
from dopd_jax.data.generated import problem as problem_lib

PRIVILEGED_FORMS = ("none", "hints", "exec_hints", "answer")
SPLITS = ("train", "test", "hard")
DOMAINS = {d.name: d for d in (arith.DOMAIN, sorting.DOMAIN, linear.DOMAIN)}
_BUCKETS = 10  # prompt hash buckets: 0 -> test, 1 -> hard, else train
_MAX_DRAWS = 20_000  # rejection-sampling budget for one example


def get_domain(name: str) -> problem_lib.Domain:
    """The registered domain `name`; ValueError listing valid names."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; valid: {sorted(DOMAINS)}")
    return DOMAINS[name]


def check_form(form: str) -> str:
    """Returns `form` if it is a privileged form, else raises ValueError."""
    if form not in PRIVILEGED_FORMS:
        raise ValueError(f"unknown privileged form {form!r}; valid: {list(PRIVILEGED_FORMS)}")
    return form


def split_of(domain: str, prompt: str) -> str:
    """The split a prompt belongs to, from a stable hash of (domain, prompt)."""
    bucket = zlib.crc32(f"{domain}\n{prompt}".encode()) % _BUCKETS
    return ("test", "hard")[bucket] if bucket < 2 else "train"


def _solution(trace: problem_lib.Trace) -> str:
    return f" {trace.work} A: {trace.answer}"


def render(domain: str, prob: problem_lib.Problem, misleading: bool) -> Example:
    """Renders a drawn problem into an `Example`."""
    shown = prob.wrong if misleading else prob.correct
    privileged = {
        "none": "",
        "hints": f" hint: {shown.plan}",
        "exec_hints": f" hint: {shown.values}",
        "answer": f" hint: {shown.answer}",
    }
    return Example(
        domain=domain,
        prompt=prob.prompt,
        privileged=privileged,
        response=_solution(prob.correct),
        answer=prob.correct.answer,
        misleading=misleading,
        priv_response=_solution(shown),
        hardness=prob.hardness,
    )


def draw(
    domain: str, difficulty: Any, seed: int, index: int, split: str, misleading_fraction: float
) -> Example:
    """Example number `index` of a split: a pure function of its arguments.

    Args:
      domain: a name in DOMAINS.
      difficulty: a resolved difficulty dataclass of that domain.
      seed: data seed.
      index: example index within the (seed, domain, split) stream.
      split: one of SPLITS.
      misleading_fraction: probability that the example is misleading.

    Returns:
      The Example.
    """
    dom = get_domain(domain)
    rng = random.Random(f"{seed}/{domain}/{split}/{index}")
    misleading = rng.random() < misleading_fraction

    def keep(prompt):
        return split_of(domain, prompt) == split

    for _ in range(_MAX_DRAWS):
        prob = dom.sample(rng, difficulty, keep)
        if prob is None:
            continue
        if split == "hard" and prob.hardness < difficulty.hard_min:
            continue
        return render(domain, prob, misleading)
    raise ValueError(
        f"no {split!r} problem of domain {domain!r} in {_MAX_DRAWS}"
        f" draws with {difficulty}; lower hard_min or widen it"
    )


def _check_args(domain: str, n: int, split: str, fraction: float) -> None:
    get_domain(domain)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"misleading_fraction must be in [0, 1], got {fraction}")


def generate(
    domain: str,
    n: int,
    seed: int,
    *,
    split: str = "train",
    difficulty: Any = None,
    misleading_fraction: float = 0.0,
) -> list[Example]:
    """Generates `n` examples, deterministically for (domain, seed, split).

    Args:
      domain: a name in DOMAINS.
      n: number of examples.
      seed: data seed.
      split: "train" (may repeat prompts, like any sampled stream), "test" or
        "hard" (distinct prompts, for evaluation).
      difficulty: None, the domain's difficulty dataclass, or a mapping of
        its field names to values.
      misleading_fraction: probability that an example is misleading.

    Returns:
      A list of `n` Examples.
    """
    _check_args(domain, n, split, misleading_fraction)
    diff = problem_lib.make_difficulty(get_domain(domain).difficulty_cls, difficulty)
    if split == "train":
        return [draw(domain, diff, seed, k, split, misleading_fraction) for k in range(n)]
    out, seen = [], set()
    for k in range(20 * n + 100):
        if len(out) == n:
            break
        ex = draw(domain, diff, seed, k, split, misleading_fraction)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    if len(out) < n:
        raise ValueError(
            f"only {len(out)} distinct {split!r} problems of domain "
            f"{domain!r} found for n={n}; the difficulty {diff} is "
            "too small a problem space"
        )
    return out


def extract_answer(domain: str, text: str) -> str | None:
    """The answer after the first `A:` in `text`, or None if there is none.

    Args:
      domain: a name in DOMAINS (selects the answer's pattern).
      text: a decoded response; text after the answer is ignored.

    Returns:
      The answer string, e.g. "166", or None.
    """
    match = re.search(r"A:\s*(" + get_domain(domain).answer_pattern + ")", text)
    return match.group(1) if match else None


def verify(example: Example, completion_text: str) -> bool:
    """True if the completion's extracted answer equals the example's answer."""
    return extract_answer(example.domain, completion_text) == example.answer
