"""Next-token sampling: temperature, top-k, top-p (nucleus) and greedy.

Pure per-step functions used by ``dopd_jax.rollout.sample``; they work on
one position ``[B, V]`` and return the sampled ids together with their
log-probability under the distribution actually sampled from.
"""

import jax
import jax.numpy as jnp


def top_k_mask(logits_BV: jax.Array, k: int) -> jax.Array:
    """Sets every logit below the k-th largest of its row to -inf.

    Args:
      logits_BV: float logits.
      k: number of entries to keep (ties with the k-th value are kept too).

    Returns:
      Masked logits, same shape.
    """
    k = min(k, logits_BV.shape[-1])
    kth_B1 = jax.lax.top_k(logits_BV, k)[0][:, -1:]
    return jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)


def top_p_mask(logits_BV: jax.Array, p: float) -> jax.Array:
    """Keeps the smallest set of top tokens whose probability mass is >= p.

    The most probable token is always kept (its preceding mass is 0 < p).

    Args:
      logits_BV: float logits (may contain -inf).
      p: nucleus mass in (0, 1].

    Returns:
      Masked logits, same shape.
    """
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    keep_BV = mass_before_BV < p
    threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BV >= threshold_B1, logits_BV, -jnp.inf)


def sampling_logits(
    logits_BV: jax.Array, *, temperature: float, top_k: int, top_p: float
) -> jax.Array:
    """Float32 logits of the sampling distribution (temperature, then top-k, top-p).

    Args:
      logits_BV: raw model logits.
      temperature: > 0.
      top_k: 0 disables.
      top_p: 1.0 disables.

    Returns:
      float32 logits with excluded tokens at -inf.
    """
    logits_BV = logits_BV.astype(jnp.float32) / temperature
    if top_k > 0:
        logits_BV = top_k_mask(logits_BV, top_k)
    if top_p < 1.0:
        logits_BV = top_p_mask(logits_BV, top_p)
    return logits_BV


def sample_tokens(
    logits_BV: jax.Array,
    key: jax.Array,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    greedy: bool,
):
    """Draws one token per row.

    Args:
      logits_BV: raw model logits at the current position.
      key: PRNG key for this step.
      temperature, top_k, top_p: see ``sampling_logits``.
      greedy: take the argmax; its log-prob is 0 (a point mass).

    Returns:
      (tokens_B int32, logp_B float32 under the distribution sampled from).
    """
    if greedy:
        tokens_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
        return tokens_B, jnp.zeros(tokens_B.shape, jnp.float32)
    logits_BV = sampling_logits(logits_BV, temperature=temperature, top_k=top_k, top_p=top_p)
    tokens_B = jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)
    logp_BV = jax.nn.log_softmax(logits_BV, axis=-1)
    logp_B = jnp.take_along_axis(logp_BV, tokens_B[:, None], axis=-1)[:, 0]
    return tokens_B, logp_B
