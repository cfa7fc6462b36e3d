"""Sampled-token objectives: divergence estimates on sampled tokens, and GRPO.

Both use only the log-probabilities of the response tokens, so they cost one
``[B, T]`` gather per model. Each returns ``(loss, metrics)`` like the losses
of ``objectives``: the loss value is the estimate itself, and its gradient is
the estimator's (``value + surrogate - sg[surrogate]``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dopd_jax.losses import divergences as div_lib

SAMPLED_KINDS = ("fkl", "rkl")


def _estimate_with_grad(value_BT, surrogate_BT):
    """``value_BT`` in the forward pass, ``grad surrogate_BT`` in the backward pass."""
    return jax.lax.stop_gradient(value_BT) + surrogate_BT - jax.lax.stop_gradient(surrogate_BT)


def sampled_divergence_tokens(
    student_logits, target_logits, tokens, *, kind="rkl", on_policy=None, chunk_size=None
):
    """Per-token single-sample estimate of a KL (see ``sampled_divergence_loss``).

    Returns ``[B, T]`` float32 values that equal the estimate and whose gradient
    is the estimator's (the target is under stop-gradient).
    """
    if kind not in SAMPLED_KINDS:
        raise ValueError(
            f"sampled divergence kind must be one of {SAMPLED_KINDS} (a JSD has no "
            f"single-sample estimate here), got {kind!r}"
        )
    div_lib.check_same_shape(student_logits, target_logits)
    logS = div_lib.sampled_logprobs(student_logits, tokens, chunk_size)
    logT = div_lib.sampled_logprobs(jax.lax.stop_gradient(target_logits), tokens, chunk_size)
    sgS = jax.lax.stop_gradient(logS)
    if kind == "rkl":
        on_w, off_w = sgS - logT, jnp.exp(sgS - logT) * (sgS - logT)
    else:
        on_w, off_w = jnp.exp(logT - sgS) * (logT - sgS), logT - sgS
    # The surrogates' gradients: d/dtheta of the divergence at y ~ S resp. y ~ T.
    on_sur = on_w * logS if kind == "rkl" else -jnp.exp(logT - sgS) * logS
    off_sur = off_w * logS if kind == "rkl" else -logS
    if on_policy is None:
        on_BT = jnp.ones_like(logS, bool)
    else:
        on_BT = jnp.broadcast_to(jnp.asarray(on_policy, bool)[:, None], logS.shape)
    value = jnp.where(on_BT, on_w, off_w)
    return _estimate_with_grad(value, jnp.where(on_BT, on_sur, off_sur))


def sampled_divergence_loss(
    student_logits, target_logits, tokens, mask, *, kind="rkl", on_policy=None, chunk_size=None
):
    """Single-sample estimate of a KL on the response tokens (methods.md section 2).

    With ``s = S(y_n)``, ``t = T(y_n)`` (the target under stop-gradient), per token:

    ======  ==============================  ===============================
    kind    y drawn from the student        y drawn off-policy (teacher/gold)
    ======  ==============================  ===============================
    rkl     ``log s - log t``               ``(s/t)(log s - log t)``
    fkl     ``(t/s)(log t - log s)``        ``log t - log s``  (SFT on y)
    ======  ==============================  ===============================

    each an unbiased estimate of the divergence at that position whose gradient
    is the score-function gradient of the divergence (the importance weight
    ``s/t`` or ``t/s`` corrects for the distribution y came from).

    Args:
      student_logits: ``[B, T, V]``; receives gradients.
      target_logits: ``[B, T, V]`` (stop-gradient).
      tokens, mask: ``[B, T]`` response tokens and valid positions.
      kind: ``"rkl"`` or ``"fkl"`` (a JSD has no single-sample form here).
      on_policy: optional bool ``[B]``, True where the student sampled the row;
        None means every row.
      chunk_size: positions per chunk of the log-prob gathers.

    Returns:
      (loss, metrics) with ``div_mean`` (token mean of the estimate).
    """
    per_token = sampled_divergence_tokens(
        student_logits, target_logits, tokens, kind=kind, on_policy=on_policy, chunk_size=chunk_size
    )
    metrics = {"div_mean": div_lib.token_mean(jax.lax.stop_gradient(per_token), mask)}
    return div_lib.sequence_mean(per_token, mask), metrics


def grpo_loss(
    student_logits,
    tokens,
    mask,
    advantage,
    sampler_logp,
    *,
    clip_eps=0.2,
    clip_eps_high=None,
    ref_logits=None,
    kl_coef=0.0,
    chunk_size=None,
):
    """GRPO's clipped-ratio policy gradient (methods.md section 8).

    Per token, with ``r_n = exp(log S(y_n) - log pi_sampler(y_n))`` and the row's
    group advantage ``A``: ``-min(r_n A, clip(r_n, 1 - eps, 1 + eps_high) A)``,
    plus ``kl_coef * (exp(log R - log S) - (log R - log S) - 1)`` (the k3
    estimate of KL(S || R) to a reference R) when ``ref_logits`` are given.

    Args:
      student_logits: ``[B, T, V]``; receives gradients.
      tokens, mask: ``[B, T]``.
      advantage: ``[B]`` group-normalized rewards (``steps.outcome``).
      sampler_logp: ``[B, T]`` log-probs of the tokens under the sampler.
      clip_eps, clip_eps_high: the ratio's clip range (``clip_eps_high`` None:
        symmetric).
      ref_logits: optional ``[B, T, V]`` reference logits (stop-gradient).
      kl_coef: weight of the KL term (needs ``ref_logits`` when > 0).
      chunk_size: positions per chunk.

    Returns:
      (loss, metrics) with ``adv_mean``, ``clip_frac``, ``ratio_mean`` and,
      with a reference, ``kl_ref``.
    """
    if advantage is None:
        raise ValueError("grpo_loss needs the group advantage (Rollout.advantage_B)")
    if kl_coef > 0 and ref_logits is None:
        raise ValueError("grpo_loss: kl_coef > 0 needs ref_logits")
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    logS = div_lib.sampled_logprobs(student_logits, tokens, chunk_size)
    adv_BT = jnp.broadcast_to(jnp.asarray(advantage, jnp.float32)[:, None], logS.shape)
    ratio = jnp.exp(logS - jax.lax.stop_gradient(sampler_logp.astype(jnp.float32)))
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + hi)
    per_token = -jnp.minimum(ratio * adv_BT, clipped * adv_BT)
    sg_ratio = jax.lax.stop_gradient(ratio)
    metrics = {
        "adv_mean": div_lib.token_mean(adv_BT, mask),
        "ratio_mean": div_lib.token_mean(sg_ratio, mask),
        "clip_frac": div_lib.token_mean(
            ((sg_ratio < 1.0 - clip_eps) | (sg_ratio > 1.0 + hi)).astype(jnp.float32), mask
        ),
    }
    if ref_logits is not None:
        logR = div_lib.sampled_logprobs(jax.lax.stop_gradient(ref_logits), tokens, chunk_size)
        k3 = jnp.exp(logR - logS) - (logR - logS) - 1.0
        metrics["kl_ref"] = div_lib.token_mean(jax.lax.stop_gradient(k3), mask)
        per_token = per_token + kl_coef * k3
    return div_lib.sequence_mean(per_token, mask), metrics
