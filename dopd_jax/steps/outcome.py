"""Outcome rewards in a step: the verifier's reward per row and GRPO's group advantage.

The verifier runs on the host (it reads decoded text), between the rollout
and the update; ``with_rewards`` attaches its rewards to the Rollout together
with the group advantage (methods.md section 8), computed over each prompt's
``n_samples`` rows before any micro-batch split, so every loss sees the
advantage of the whole group.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def group_advantage(reward_B, group_size: int, eps: float = 1e-6) -> np.ndarray:
    """``(r - mean_g) / (std_g + eps)`` over each group of ``group_size`` consecutive rows.

    Row ``i * n + j`` is sample j of prompt i (the rollout's order); std is the
    population standard deviation, so a group whose rewards are all equal gets 0.
    """
    r = np.asarray(reward_B, np.float32)
    if group_size < 1 or r.ndim != 1 or r.shape[0] % group_size:
        raise ValueError(f"{r.shape} rewards do not split into groups of {group_size}")
    g = r.reshape(-1, group_size)
    adv = (g - g.mean(axis=1, keepdims=True)) / (g.std(axis=1, keepdims=True) + eps)
    return adv.reshape(-1).astype(np.float32)


def with_rewards(ro, reward_B, group_size: int, to_device=lambda x: x, eps: float = 1e-6):
    """The Rollout with ``reward_B`` and its group advantage ``advantage_B`` set.

    ``to_device`` places the host arrays like the rollout's rows
    (``sharding.to_global_batch``)."""
    reward = np.asarray(reward_B, np.float32)
    if reward.shape != (ro.tokens_BT.shape[0],):
        raise ValueError(f"rewards {reward.shape} must be one per rollout row {ro.tokens_BT.shape}")
    adv = group_advantage(reward, group_size, eps)
    return dataclasses.replace(ro, reward_B=to_device(reward), advantage_B=to_device(adv))
