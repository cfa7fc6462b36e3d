"""Deterministic, resumable training streams and fixed evaluation sets.

Global batch `i` of a `TrainStream` is a pure function of (seed, i): row r
is example number `i * batch_size + r`, whose domain (for a mix) and
content are drawn from seeds built from that number alone. The iterator
state is therefore the next batch index, and a process of a multi-host run
takes rows `[process_index * local, (process_index + 1) * local)` of every
global batch, so processes see disjoint examples whose union is the
single-process batch, whatever the process count.

Plain Python, not grain: examples are generated on demand from their index
in microseconds and are dataclasses of strings, so grain's sources,
batching (array stacking) and worker processes would add nothing that the
one-integer state does not already give; the state dict has the same
get/set contract as a grain iterator's.
"""

import bisect
import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from dopd_jax.data.generated import problem as problem_lib
from dopd_jax.data.generated import tasks


def _weights(domains: Sequence[str], mix: Sequence[float] | None) -> list[float]:
    """Cumulative domain weights, normalized to end at 1."""
    mix = [1.0] * len(domains) if mix is None else list(mix)
    if len(mix) != len(domains) or any(w < 0 for w in mix) or sum(mix) <= 0:
        raise ValueError(
            f"mix must be {len(domains)} non-negative weights with a "
            f"positive sum (one per domain {list(domains)}), got {mix}"
        )
    total = sum(mix)
    return [c / total for c in itertools.accumulate(mix)]


class TrainStream:
    """Infinite stream of training batches (lists of `tasks.Example`).

    Each example's `domain` field is its domain label (for MOPD routing).
    """

    def __init__(
        self,
        domains: Sequence[str],
        batch_size: int,
        seed: int,
        *,
        difficulty: Mapping[str, Any] | None = None,
        misleading_fraction: float = 0.0,
        mix: Sequence[float] | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        """Builds the stream.

        Args:
          domains: domain names (non-empty, no repeats).
          batch_size: global batch size, divisible by process_count.
          seed: data seed.
          difficulty: optional mapping domain -> difficulty overrides (a mapping
            of field values or the domain's difficulty dataclass).
          misleading_fraction: probability that an example is misleading.
          mix: optional per-domain sampling weights (default uniform).
          process_index: this process's index in [0, process_count).
          process_count: number of processes sharing each global batch.
        """
        self.domains = tuple(domains)
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains must be non-empty and distinct, got {list(self.domains)}")
        for d in self.domains:
            tasks.get_domain(d)
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if batch_size <= 0 or batch_size % process_count:
            raise ValueError(
                f"batch_size {batch_size} must be positive and "
                f"divisible by process_count {process_count}"
            )
        if not 0.0 <= misleading_fraction <= 1.0:
            raise ValueError(f"misleading_fraction must be in [0, 1], got {misleading_fraction}")
        difficulty = dict(difficulty or {})
        unknown = sorted(set(difficulty) - set(self.domains))
        if unknown:
            raise ValueError(
                f"difficulty given for {unknown}, not among the "
                f"stream's domains {list(self.domains)}"
            )
        self._difficulty = {
            d: problem_lib.make_difficulty(tasks.get_domain(d).difficulty_cls, difficulty.get(d))
            for d in self.domains
        }
        self._cum_weights = _weights(self.domains, mix)
        self.batch_size, self.seed = batch_size, seed
        self.misleading_fraction = misleading_fraction
        self.local_batch_size = batch_size // process_count
        self._first_row = process_index * self.local_batch_size
        self._next = 0

    def _example(self, k: int) -> tasks.Example:
        """Global example number k."""
        u = random.Random(f"{self.seed}/mix/{k}").random()
        domain = self.domains[min(bisect.bisect_right(self._cum_weights, u), len(self.domains) - 1)]
        return tasks.draw(
            domain, self._difficulty[domain], self.seed, k, "train", self.misleading_fraction
        )

    def batch(self, i: int) -> list[tasks.Example]:
        """This process's rows of global batch `i` (does not move the stream)."""
        start = i * self.batch_size + self._first_row
        return [self._example(k) for k in range(start, start + self.local_batch_size)]

    def __iter__(self):
        return self

    def __next__(self) -> list[tasks.Example]:
        out = self.batch(self._next)
        self._next += 1
        return out

    def get_state(self) -> dict:
        """JSON-able state: the next batch index and the stream's identity."""
        return {
            "next_batch": self._next,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "domains": list(self.domains),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores `get_state()` output (from any process count)."""
        mine = self.get_state()
        for key in ("seed", "batch_size", "domains"):
            got = state.get(key)
            got = list(got) if key == "domains" and got is not None else got
            if got != mine[key]:
                raise ValueError(
                    f"stream state has {key}={state.get(key)!r}, this stream has {mine[key]!r}"
                )
        if int(state["next_batch"]) < 0:
            raise ValueError(f"next_batch must be >= 0, got {state['next_batch']}")
        self._next = int(state["next_batch"])


def eval_set(
    domain: str,
    split: str = "test",
    n: int = 1000,
    seed: int = 0,
    *,
    difficulty: Any = None,
    misleading_fraction: float = 0.0,
) -> list[tasks.Example]:
    """A fixed evaluation set of distinct prompts (evaluate without p).

    Args:
      domain: a name in tasks.DOMAINS.
      split: "test" (in distribution) or "hard" (harder, same lengths); "train"
        is allowed for train-set accuracy.
      n: number of examples.
      seed: data seed.
      difficulty: the domain's difficulty overrides (as for the training data).
      misleading_fraction: fraction of misleading p, for evaluating the
        privileged student or teacher with p.

    Returns:
      A list of n Examples.
    """
    return tasks.generate(
        domain, n, seed, split=split, difficulty=difficulty, misleading_fraction=misleading_fraction
    )
