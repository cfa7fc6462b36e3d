"""Early stop on the collapse signals a run already logs (methods.md section 10).

Privileged self-distillation fails in known ways; this project's own pilot
saw DOPD collapse with HS growing to half of all tokens and ``A_bar``
climbing. ``EarlyStop`` watches the logged records and names the first
condition that held for ``patience`` consecutive logs:

  hs_frac       the HS share of tokens is above this
  a_bar_rise    ``A_bar`` rose at every one of the last ``a_bar_rise`` logs
  min_entropy   the student's entropy on its response tokens is below this
  length_drift  the mean response length is at or above this fraction of
                ``max_new_tokens`` (drifting towards the limit)

Each is off at 0. The host loop then checkpoints and ends the run; the
result records the step and the reason, and a resumed run stays stopped.
"""

from __future__ import annotations

import dataclasses

FIELDS = ("hs_frac", "a_bar_rise", "min_entropy", "length_drift", "patience")


@dataclasses.dataclass
class EarlyStop:
    hs_frac: float = 0.0
    a_bar_rise: int = 0
    min_entropy: float = 0.0
    length_drift: float = 0.0
    patience: int = 3
    max_new_tokens: int = 0
    counts: dict = dataclasses.field(default_factory=dict)
    a_bar: list = dataclasses.field(default_factory=list)
    stopped: dict | None = None  # {"step": k, "reason": "..."} once triggered

    def __post_init__(self):
        if self.patience < 1 or self.a_bar_rise < 0:
            raise ValueError("early_stop: patience must be >= 1 and a_bar_rise >= 0")
        if not 0.0 <= self.length_drift <= 1.0:
            raise ValueError(f"early_stop.length_drift must be in [0, 1], got {self.length_drift}")

    @property
    def enabled(self) -> bool:
        return bool(self.hs_frac or self.a_bar_rise or self.min_entropy or self.length_drift)

    def _held(self, name: str, cond: bool) -> bool:
        self.counts[name] = self.counts.get(name, 0) + 1 if cond else 0
        return self.counts[name] >= self.patience

    def update(self, step: int, m: dict) -> str | None:
        """Feeds one logged record; returns the reason to stop now, or None."""
        if self.stopped is not None:
            return self.stopped["reason"]
        reasons = []
        if self.hs_frac and "frac_HS" in m and self._held("hs", m["frac_HS"] > self.hs_frac):
            reasons.append(f"HS share {m['frac_HS']:.0%} > {self.hs_frac:.0%}")
        if self.min_entropy and "student_entropy" in m:
            if self._held("entropy", m["student_entropy"] < self.min_entropy):
                reasons.append(f"student entropy {m['student_entropy']:.3g} < {self.min_entropy}")
        if self.length_drift and self.max_new_tokens and "response_len" in m:
            limit = self.length_drift * self.max_new_tokens
            if self._held("length", m["response_len"] >= limit):
                reasons.append(f"response length {m['response_len']:.1f} >= {limit:.1f} tokens")
        if self.a_bar_rise and "A_bar" in m:
            self.a_bar = (self.a_bar + [float(m["A_bar"])])[-(self.a_bar_rise + 1) :]
            w = self.a_bar
            if len(w) == self.a_bar_rise + 1 and all(b > a for a, b in zip(w, w[1:])):
                reasons.append(f"A_bar rose at each of the last {self.a_bar_rise} logs")
        if not reasons:
            return None
        reason = "; ".join(reasons) + f" (for {self.patience} logs)" * (self.patience > 1)
        self.stopped = {"step": step, "reason": reason}
        return reason

    def state(self) -> dict:
        return {"counts": dict(self.counts), "a_bar": list(self.a_bar), "stopped": self.stopped}

    def restore(self, state: dict | None) -> EarlyStop:
        if state:
            self.counts, self.a_bar = dict(state["counts"]), list(state["a_bar"])
            self.stopped = state["stopped"]
        return self
