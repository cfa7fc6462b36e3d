"""DOPD collapse diagnostics (methods.md section 4): warn, never hide.

A CPU pilot saw DOPD collapse when large-gap tokens where the privileged
student was more confident (HS) were mostly the student's own mistakes: HS
grew to about half of all tokens and the relative threshold ``A_bar`` kept
rising. ``CollapseMonitor`` watches the logged metrics for both signs.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class CollapseMonitor:
    """Raises a warning (once per kind) when DOPD's routing drifts.

    Attributes:
      hs_threshold: warn when the share of HS tokens exceeds this.
      rise_window: number of consecutive logged ``A_bar`` values that must
        each exceed the previous one ...
      rise_factor: ... with the last at least this multiple of the first.
    """

    hs_threshold: float = 0.30
    rise_window: int = 5
    rise_factor: float = 1.25
    history: list = dataclasses.field(default_factory=list)
    raised: set = dataclasses.field(default_factory=set)

    def update(self, step: int, metrics: dict) -> list[str]:
        """Feeds one logged record; returns new warning messages (may be empty)."""
        out = []
        frac_hs = metrics.get("frac_HS")
        if frac_hs is not None and frac_hs > self.hs_threshold and "hs" not in self.raised:
            self.raised.add("hs")
            out.append(
                f"step {step}: HS tokens are {frac_hs:.0%} of all tokens "
                f"(> {self.hs_threshold:.0%}); the privileged student may be "
                "reinforcing its own mistakes (try hs_target=teacher or "
                "priv_student=frozen)"
            )
        a_bar = metrics.get("A_bar")
        if a_bar is not None:
            self.history.append(float(a_bar))
            if self._rising() and "a_bar" not in self.raised:
                self.raised.add("a_bar")
                w = self.history[-self.rise_window :]
                out.append(
                    f"step {step}: A_bar kept rising over the last {self.rise_window} "
                    f"logs ({w[0]:.3g} -> {w[-1]:.3g}); the routing threshold is "
                    "drifting with the student"
                )
        return out

    def _rising(self) -> bool:
        w = self.history[-self.rise_window :]
        if len(w) < self.rise_window:
            return False
        increasing = all(b > a for a, b in zip(w, w[1:]))
        return increasing and w[-1] >= self.rise_factor * max(w[0], 1e-8)

    def state(self) -> dict:
        """JSON-able state (saved with training checkpoints)."""
        return {"history": list(self.history), "raised": sorted(self.raised)}

    @classmethod
    def from_state(cls, state: dict) -> CollapseMonitor:
        """Inverse of ``state``."""
        return cls(history=list(state["history"]), raised=set(state["raised"]))
