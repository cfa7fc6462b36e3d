"""Wall time of each stage of an experiment, kept across resumes.

A stage's seconds are recorded by the process that did its work and saved in
``WORKDIR/timings.json``; a later process that restores the stage (a finished
SFT, a finished run) keeps the recorded time instead of its own load time.
``results.json`` carries them under ``wall_times_s``. ``context`` (task data and
tokenizer) is measured on every start; a run resumed mid-way records the time of
its last part only.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import jax


class StageTimes:
    """``with times.stage(name, ran):`` records the block's seconds when ``ran``."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "timings.json")
        self.times: dict[str, float] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.times = json.load(f)

    @contextlib.contextmanager
    def stage(self, name: str, ran: bool = True):
        t0 = time.perf_counter()
        yield
        if ran:
            self.record(name, time.perf_counter() - t0)

    def record(self, name: str, seconds: float) -> None:
        self.times[name] = round(seconds, 2)
        if jax.process_index() == 0:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.times, f, indent=2, sort_keys=True)
            os.replace(tmp, self.path)

    def as_dict(self) -> dict[str, float]:
        return dict(sorted(self.times.items()))
