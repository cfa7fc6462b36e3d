"""Token-level diagnostics of a student against a target (methods.md section 9).

Logging only: every input is under stop-gradient and every output is a
float32 scalar averaged over the valid response tokens.
"""

import jax
import jax.numpy as jnp

from dopd_jax.losses import divergences as div_lib


def _membership_BCV(idx_BCK, vocab):
    """0/1 float mask of the ids in idx over the vocabulary."""
    one_row = lambda idx_K: jnp.zeros((vocab,), jnp.float32).at[idx_K].set(1.0)
    return jax.vmap(jax.vmap(one_row))(idx_BCK)


def _chunk_stats(s_BCV, t_BCV, tokens_BC, *, top_k):
    """Per-token statistics for one chunk of positions."""
    logs_BCV = jax.nn.log_softmax(s_BCV.astype(jnp.float32), axis=-1)
    logt_BCV = jax.nn.log_softmax(t_BCV.astype(jnp.float32), axis=-1)
    s_BCV, t_BCV = jnp.exp(logs_BCV), jnp.exp(logt_BCV)
    s_top_BCK, s_idx_BCK = jax.lax.top_k(s_BCV, top_k)
    t_top_BCK, t_idx_BCK = jax.lax.top_k(t_BCV, top_k)
    in_t_top_BCV = _membership_BCV(t_idx_BCK, s_BCV.shape[-1])
    pick = lambda x_BCV: jnp.take_along_axis(x_BCV, tokens_BC[..., None], -1)[..., 0]
    plogp = lambda p_BCV, logp_BCV: jnp.sum(jnp.where(p_BCV > 0, p_BCV * logp_BCV, 0.0), axis=-1)
    return {
        "student_entropy": -plogp(s_BCV, logs_BCV),
        "target_entropy": -plogp(t_BCV, logt_BCV),
        "kl_sampled": pick(logs_BCV) - pick(logt_BCV),
        "student_topk_mass": jnp.sum(s_top_BCK, axis=-1),
        "target_topk_mass": jnp.sum(t_top_BCK, axis=-1),
        "student_mass_on_target_topk": jnp.sum(s_BCV * in_t_top_BCV, axis=-1),
        "topk_overlap": jnp.sum(jnp.take_along_axis(in_t_top_BCV, s_idx_BCK, axis=-1), axis=-1)
        / top_k,
    }


def token_stats(
    student_logits, target_logits, tokens, mask, *, top_k=128, chunk_size=None, prefix=""
):
    """Entropy, sampled KL and top-K agreement of student and target.

    Args:
      student_logits: ``[B, T, V]`` student logits.
      target_logits: ``[B, T, V]`` target logits.
      tokens: ``[B, T]`` sampled response tokens.
      mask: ``[B, T]`` bool/float, valid response tokens.
      top_k: K of the top-K statistics (clamped to V).
      chunk_size: positions per chunk (None: one pass).
      prefix: prepended to every metric name.

    Returns:
      dict of float32 scalars (means over valid tokens): student_entropy,
      target_entropy, kl_sampled (log s(y) - log t(y)), student_topk_mass (of
      the student on its own top-K), target_topk_mass (of the target on its
      top-K), student_mass_on_target_topk, topk_overlap
      (|topK(s) & topK(t)| / K).
    """
    div_lib.check_top_k(top_k, allow_none=False)
    div_lib.check_same_shape(student_logits, target_logits)
    if tokens.shape != student_logits.shape[:2] or mask.shape != tokens.shape:
        raise ValueError(
            f"tokens {tokens.shape} and mask {mask.shape} must match "
            f"the logits' [B, T] = {student_logits.shape[:2]}"
        )
    k = min(top_k, student_logits.shape[-1])
    fn = lambda s, t, y: _chunk_stats(s, t, y, top_k=k)
    per_token = div_lib.map_positions(
        fn,
        jax.lax.stop_gradient(student_logits),
        jax.lax.stop_gradient(target_logits),
        tokens,
        chunk_size=chunk_size,
    )
    return {prefix + name: div_lib.token_mean(x_BT, mask) for name, x_BT in per_token.items()}
