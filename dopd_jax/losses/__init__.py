"""Losses on arrays only: divergences, DOPD routing, the distillation objectives, diagnostics.

Every function takes logits ``[B, T, V]`` aligned so that ``logits[:, n]``
predicts ``tokens[:, n]`` and a ``mask [B, T]`` of valid response tokens; no
model, config or framework object crosses this boundary.

    divergences  per-token FKL / RKL / JSD (full, top-K, sampled), chunked means
    routing      DOPD privilege statistics, trimmed mean, regimes
    objectives   dopd_loss, opd_pg_loss, divergence_loss
    policy       sampled-token divergence estimates, GRPO's clipped policy gradient
    diagnostics  entropies, top-K overlap, sampled-token KLs (methods.md section 9)
"""

from dopd_jax.losses import diagnostics, divergences, objectives, policy, routing
from dopd_jax.losses.divergences import (
    entropy,
    sampled_logprobs,
    sequence_mean,
    token_divergence,
    token_mean,
)
from dopd_jax.losses.objectives import HS_TARGETS, LOSSES, divergence_loss, dopd_loss, opd_pg_loss
from dopd_jax.losses.policy import grpo_loss, sampled_divergence_loss
from dopd_jax.losses.routing import REGIMES, dopd_regimes, privilege_stats, trimmed_mean

__all__ = [
    "HS_TARGETS",
    "LOSSES",
    "REGIMES",
    "diagnostics",
    "divergence_loss",
    "divergences",
    "dopd_loss",
    "dopd_regimes",
    "entropy",
    "grpo_loss",
    "objectives",
    "opd_pg_loss",
    "policy",
    "privilege_stats",
    "routing",
    "sampled_divergence_loss",
    "sampled_logprobs",
    "sequence_mean",
    "token_divergence",
    "token_mean",
    "trimmed_mean",
]
