"""Metric sinks: one JSON line per record in ``metrics.jsonl`` plus TensorBoard events."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def _to_float(v: Any) -> float:
    v = float(np.asarray(v))
    return v if math.isfinite(v) else float("nan")


class MetricWriter:
    """Appends scalar metrics to ``workdir/metrics.jsonl`` and TensorBoard.

    Each record carries a ``run`` tag (``teacher_sft``, ``distill/dopd``...) so
    one file holds the whole experiment; TensorBoard gets one event directory
    per run under ``workdir/tb``.
    """

    def __init__(self, workdir: str, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self._path = os.path.join(workdir, "metrics.jsonl")
        self._tb_root = os.path.join(workdir, "tb") if tensorboard else None
        self._tb = {}
        self._purge = {}

    def resume(self, run: str, step: int) -> None:
        """Marks ``run`` as resumed after ``step``: TensorBoard events of later steps
        (written before an interruption) are purged when the run writes again."""
        if step > 0:
            self._purge[run] = step + 1

    def _tb_writer(self, run: str):
        if self._tb_root is None:
            return None
        if run not in self._tb:
            from tensorboardX import SummaryWriter  # local: optional at import time

            self._tb[run] = SummaryWriter(
                os.path.join(self._tb_root, run.replace("/", "_")), purge_step=self._purge.get(run)
            )
        return self._tb[run]

    def write(self, run: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes one record of scalars for ``run`` at ``step``."""
        scalars = {k: _to_float(v) for k, v in metrics.items()}
        with open(self._path, "a") as f:
            f.write(json.dumps({"run": run, "step": int(step), **scalars}) + "\n")
        tb = self._tb_writer(run)
        if tb is not None:
            for k, v in scalars.items():
                tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        for tb in self._tb.values():
            tb.close()
        self._tb = {}


class NullMetricWriter:
    """A ``MetricWriter`` that writes nothing (processes other than 0 of a multi-process run)."""

    def resume(self, run: str, step: int) -> None:
        """Ignored."""

    def write(self, run: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Ignored."""

    def close(self) -> None:
        """Nothing to close."""


def read_metrics(workdir: str, run: str | None = None) -> list[dict]:
    """Reads back the records of ``metrics.jsonl`` (optionally of one run)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if run is None or r["run"] == run]
