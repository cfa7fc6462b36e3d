"""Capturing per-token statistics of a run for offline routing experiments.

``capture_token_stats`` samples one batch from the student, scores it under
the privileged student and the privileged teacher, and returns plain NumPy
arrays, so routing rules (``dopd_jax.losses.routing``) can be prototyped in a
notebook without touching the training code.
"""

from __future__ import annotations

import jax
import numpy as np

from dopd_jax import steps as steps_lib
from dopd_jax.losses import routing


def capture_token_stats(
    spec: steps_lib.DistillSpec, student, teacher, batch, examples, key
) -> dict:
    """One on-policy batch's per-token statistics as host arrays.

    Args:
      spec: the step description (sampler settings and method; the method must
        score ``priv_teacher`` and ``priv_student``, e.g. ``dopd``).
      student, teacher: ``sft_stage.Model`` (graphdef, params, config).
      batch: a ``steps.PromptBatch``.
      examples: the examples behind ``batch`` (row order), for labels.
      key: PRNG key of the rollout.

    Returns:
      dict of NumPy arrays ``[B, T]``: ``gap``, ``qS``, ``qT``, ``logqS``,
      ``logqT``, ``mask``, ``tokens``; and ``[B]``: ``misleading`` (the
      example's privileged context is wrong) and ``example_index``.
    """
    state = steps_lib.TrainState(student.params, None, student.params, np.int32(0))
    graphdefs = {"student": student.graphdef, "teacher": teacher.graphdef}
    teachers = {"teacher": teacher.params}
    ro = steps_lib.rollout_step(graphdefs, spec, state, teachers, batch, key)
    targets = steps_lib.score_step(graphdefs, spec, state, teachers, batch, ro)
    stats = routing.privilege_stats(targets["priv_student"], targets["priv_teacher"], ro.tokens_BT)
    out = {k: np.asarray(v) for k, v in jax.device_get(stats).items()}
    out["mask"] = np.asarray(ro.mask_BT)
    out["tokens"] = np.asarray(ro.tokens_BT)
    n = spec.sampler.n_samples
    out["example_index"] = np.repeat(np.arange(len(examples)), n)
    out["misleading"] = np.array([examples[i].misleading for i in out["example_index"]])
    return out


def regime_shares(regimes: dict, mask_BT, rows=None) -> dict:
    """Share of each regime among the valid tokens (optionally of some rows)."""
    mask = np.asarray(mask_BT, bool)
    if rows is not None:
        mask = mask & np.asarray(rows, bool)[:, None]
    total = max(int(mask.sum()), 1)
    return {r: float((np.asarray(m) * mask).sum() / total) for r, m in regimes.items()}
