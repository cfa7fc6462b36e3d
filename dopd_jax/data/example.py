"""The one record every task source yields: a prompt, its privileged forms, references.

Segment convention (methods.md section 1): the prompt x has no leading space;
a privileged context p and a response y that follow it start with one space
(or other whitespace), because each segment is tokenized on its own and the
ids are concatenated. Sources normalise their text to this convention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

NO_PRIVILEGE = "none"  # the form every example has: an empty p


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt with optional privileged context, gold response and answer.

    Attributes:
      prompt: x, e.g. ``"Q: 37*4+18=?"``.
      privileged: form name -> p text, e.g. ``{"none": "", "answer": " hint: 166"}``;
        every source offers the form ``"none"`` (empty p).
      response: the gold response y, or None when the source has none.
      answer: the reference answer the verifier compares with, or None.
      domain: the example's domain label (MOPD routes by it); ``""`` if none.
      priv_response: what a model shown p should answer (the generated tasks'
        misleading hints change it); None means ``response``.
      misleading: True when every non-empty form of p tells a wrong story.
      hardness: a source-specific difficulty count (0 when unknown).
    """

    prompt: str
    privileged: Mapping[str, str] = dataclasses.field(default_factory=lambda: {NO_PRIVILEGE: ""})
    response: str | None = None
    answer: str | None = None
    domain: str = ""
    priv_response: str | None = None
    misleading: bool = False
    hardness: int = 0

    def p(self, form: str) -> str:
        """The privileged context of ``form``; KeyError lists the forms this example has."""
        if form == NO_PRIVILEGE:
            return self.privileged.get(NO_PRIVILEGE, "")
        if form not in self.privileged:
            raise KeyError(
                f"example has no privileged form {form!r}; it has "
                f"{sorted(self.privileged)} (prompt {self.prompt[:60]!r})"
            )
        return self.privileged[form]

    def target(self, p_shown: bool) -> str | None:
        """The SFT response: ``priv_response`` when p is shown and set, else ``response``."""
        if p_shown and self.priv_response is not None:
            return self.priv_response
        return self.response
