"""Per-token divergences between a student and a target distribution.

methods.md section 2. Every function takes logits ``[B, T, V]`` (any float
dtype), does its math in float32 (float64 inputs stay float64, for gradient
checks) and returns per-token values ``[B, T]``.
Targets are always under ``jax.lax.stop_gradient``: the gradient flows only
through the student. With ``chunk_size`` the work runs over chunks of
positions under ``jax.checkpoint``, so at most one ``[B, C, V]`` float32 block
per model is alive at a time, in the forward and in the backward pass.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

TOPK_MODES = ("renormalize", "generalized")


def upcast(x):
    """Casts to at least float32 (bf16 -> f32; f64 stays f64 for tests)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _p_log_ratio(logp_NV, logq_NV):
    """sum_v p (log p - log q), with p = 0 entries contributing exactly 0."""
    p_NV = jnp.exp(logp_NV)
    # Double where: a -inf log-prob must not turn the gradient into NaN.
    diff_NV = jnp.where(p_NV > 0, logp_NV - logq_NV, 0.0)
    return jnp.sum(p_NV * diff_NV, axis=-1)


def _fkl(logs_NV, logt_NV, beta):
    """Forward KL: sum t log(t/s)."""
    del beta
    return _p_log_ratio(logt_NV, logs_NV)


def _rkl(logs_NV, logt_NV, beta):
    """Reverse KL: sum s log(s/t)."""
    del beta
    return _p_log_ratio(logs_NV, logt_NV)


def _jsd(logs_NV, logt_NV, beta):
    """beta KL(t||m) + (1-beta) KL(s||m), m = beta t + (1-beta) s."""
    # log(0) = -inf is fine for beta in {0, 1}: logaddexp ignores that side.
    logm_NV = jnp.logaddexp(jnp.log(beta) + logt_NV, jnp.log(1.0 - beta) + logs_NV)
    return beta * _p_log_ratio(logt_NV, logm_NV) + (1.0 - beta) * _p_log_ratio(logs_NV, logm_NV)


def _generalized_fkl(logs_NV, logt_NV, beta):
    """sum t log(t/s) - t + s over unnormalized restricted masses."""
    mass_diff_N = jnp.sum(jnp.exp(logs_NV) - jnp.exp(logt_NV), axis=-1)
    return _fkl(logs_NV, logt_NV, beta) + mass_diff_N


def _generalized_rkl(logs_NV, logt_NV, beta):
    """sum s log(s/t) - s + t over unnormalized restricted masses (MOPD)."""
    mass_diff_N = jnp.sum(jnp.exp(logt_NV) - jnp.exp(logs_NV), axis=-1)
    return _rkl(logs_NV, logt_NV, beta) + mass_diff_N


@dataclasses.dataclass(frozen=True)
class Divergence:
    """A divergence on log-probabilities whose last axis is the vocabulary.

    exact: the divergence of two normalized distributions.
    generalized: its form on unnormalized masses (top-K without
      renormalization); every summand is >= 0 and is 0 iff s = t.
    """

    exact: Callable
    generalized: Callable


# The generalized JSD is the JSD formula applied to the unnormalized masses:
# the generalized-KL corrections (-t + m and -s + m) cancel in the beta
# mixture, and each summand beta t log(t/m) + (1-beta) s log(s/m) is >= 0 by
# convexity of x log x, with equality iff s = t.
DIVERGENCES = {
    "fkl": Divergence(exact=_fkl, generalized=_generalized_fkl),
    "rkl": Divergence(exact=_rkl, generalized=_generalized_rkl),
    "jsd": Divergence(exact=_jsd, generalized=_jsd),
}


def check_logits(name, logits):
    """Raises ValueError unless logits has rank 3 ``[B, T, V]``."""
    if logits.ndim != 3:
        raise ValueError(f"{name} must be [B, T, V], got shape {logits.shape}")


def check_chunk_size(chunk_size):
    """Raises ValueError unless chunk_size is None or an int >= 1."""
    bad_type = isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
    if chunk_size is not None and (bad_type or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")


def check_top_k(top_k, allow_none=True):
    """Raises ValueError unless top_k is an int >= 1 (or None if allowed)."""
    if top_k is None and allow_none:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")


def map_positions(fn, *arrays_BT, chunk_size=None):
    """Applies fn over chunks of positions (axis 1) and stitches the results.

    Chunks are sliced from the inputs inside a scan (no padded or transposed
    copy of the logits). When C does not divide T the last chunk is shifted
    back to end at T; its overlap with the previous chunk is discarded.

    Args:
      fn: maps arrays ``[B, C, ...]`` to a pytree of ``[B, C]`` arrays.
      *arrays_BT: arrays sharing the leading axes ``[B, T]``.
      chunk_size: positions per chunk; None (or >= T) calls fn once.

    Returns:
      fn's pytree with ``[B, T]`` leaves.
    """
    check_chunk_size(chunk_size)
    batch, length = arrays_BT[0].shape[:2]
    if chunk_size is None or chunk_size >= length:
        return fn(*arrays_BT)
    n_chunks = -(-length // chunk_size)

    # The slices live inside the checkpoint, so its saved inputs are the whole
    # (loop-invariant) arrays and a start index: the backward pass recomputes
    # each chunk's float32 [B, C, V] instead of keeping every chunk's. (XLA:CPU
    # still upcasts bf16 inputs wholesale, as it has no native bf16 ops.)
    @jax.checkpoint
    def chunk_fn(start, *arrays):
        xs = [jax.lax.dynamic_slice_in_dim(a, start, chunk_size, axis=1) for a in arrays]
        return fn(*xs)

    def body(carry, start):
        return carry, chunk_fn(start, *arrays_BT)

    starts = jnp.minimum(jnp.arange(n_chunks) * chunk_size, length - chunk_size)
    _, out = jax.lax.scan(body, None, starts)
    tail = length - (n_chunks - 1) * chunk_size  # positions new in the last chunk

    def unsplit(y_NBC):
        head_BX = jnp.moveaxis(y_NBC[:-1], 0, 1).reshape(batch, -1)
        return jnp.concatenate([head_BX, y_NBC[-1][:, chunk_size - tail :]], axis=1)

    return jax.tree.map(unsplit, out)


def _chunk_divergence(s_BCV, t_BCV, *, kind, beta, top_k, topk_mode):
    """Divergence for one chunk of positions; see token_divergence."""
    logs_BCV = jax.nn.log_softmax(upcast(s_BCV), axis=-1)
    logt_BCV = jax.nn.log_softmax(upcast(jax.lax.stop_gradient(t_BCV)), axis=-1)
    div = DIVERGENCES[kind]
    # K >= V is the full vocabulary (the divergences are permutation-invariant).
    if top_k is None or top_k >= logs_BCV.shape[-1]:
        return div.exact(logs_BCV, logt_BCV, beta)
    logt_BCK, idx_BCK = jax.lax.top_k(logt_BCV, top_k)
    logs_BCK = jnp.take_along_axis(logs_BCV, idx_BCK, axis=-1)
    if topk_mode == "generalized":
        return div.generalized(logs_BCK, logt_BCK, beta)
    logs_BCK = logs_BCK - jax.nn.logsumexp(logs_BCK, axis=-1, keepdims=True)
    logt_BCK = logt_BCK - jax.nn.logsumexp(logt_BCK, axis=-1, keepdims=True)
    return div.exact(logs_BCK, logt_BCK, beta)


def check_divergence_args(kind, beta, top_k, topk_mode):
    """Raises ValueError on an unknown kind/topk_mode, bad top_k or beta."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence kind {kind!r}; use one of {sorted(DIVERGENCES)}")
    if topk_mode not in TOPK_MODES:
        raise ValueError(f"unknown topk_mode {topk_mode!r}; use one of {TOPK_MODES}")
    check_top_k(top_k)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")


def check_same_shape(student_logits_BTV, target_logits_BTV, target_name="target"):
    """Raises ValueError unless both are ``[B, T, V]`` with equal shapes."""
    check_logits("student logits", student_logits_BTV)
    check_logits(f"{target_name} logits", target_logits_BTV)
    s_shape, t_shape = student_logits_BTV.shape, target_logits_BTV.shape
    if s_shape[-1] != t_shape[-1]:
        raise ValueError(
            f"vocabulary size mismatch: student V={s_shape[-1]}, {target_name} V={t_shape[-1]}"
        )
    if s_shape != t_shape:
        raise ValueError(
            f"student logits {s_shape} and {target_name} logits {t_shape} "
            "must have the same [B, T, V] shape"
        )


def token_divergence(
    student_logits_BTV,
    target_logits_BTV,
    *,
    kind,
    beta=0.5,
    top_k=None,
    topk_mode="renormalize",
    chunk_size=None,
):
    """Per-token divergence D(student, target) (methods.md section 2).

    Args:
      student_logits_BTV: student logits; the only input receiving gradients.
      target_logits_BTV: target logits (stop-gradient inside).
      kind: "fkl" (sum t log t/s), "rkl" (sum s log s/t) or "jsd"
        (beta KL(t||m) + (1-beta) KL(s||m), m = beta t + (1-beta) s).
      beta: JSD mixture weight of the target, in [0, 1] (ignored by KLs).
      top_k: None for the full vocabulary, else restrict to the target's K
        most probable ids (K clamped to V).
      topk_mode: "renormalize" (renormalize s and t over the top-K ids, exact
        divergence there) or "generalized" (no renormalization; summands
        s log(s/t) - s + t for rkl, t log(t/s) - t + s for fkl, and the JSD
        summands on the unnormalized masses for jsd; all >= 0).
      chunk_size: positions per chunk (None: one pass).

    Returns:
      div_BT float32.
    """
    check_divergence_args(kind, beta, top_k, topk_mode)
    check_same_shape(student_logits_BTV, target_logits_BTV)
    fn = lambda s, t: _chunk_divergence(
        s, t, kind=kind, beta=beta, top_k=top_k, topk_mode=topk_mode
    )
    return map_positions(fn, student_logits_BTV, target_logits_BTV, chunk_size=chunk_size)


def token_divergences(
    student_logits_BTV, targets, requests, *, topk_mode="renormalize", chunk_size=None
):
    """Several per-token divergences of one student in a single chunked pass.

    One pass matters for memory: the backward pass of each separate chunked
    scan accumulates its own full ``[B, T, V]`` gradient of the student logits,
    so k separate calls hold k of them; one pass holds one.

    Args:
      student_logits_BTV: student logits; the only input receiving gradients.
      targets: dict name -> target logits ``[B, T, V]`` (stop-gradient inside).
      requests: dict key -> ``(target_name, kind, beta, top_k)`` as in
        ``token_divergence`` (top_k None = full vocabulary).
      topk_mode: "renormalize" or "generalized", shared by all requests.
      chunk_size: positions per chunk (None: one pass).

    Returns:
      dict key -> div_BT float32.
    """
    names = sorted(targets)
    for target, kind, beta, top_k in requests.values():
        if target not in targets:
            raise ValueError(f"unknown target {target!r}; given: {names}")
        check_divergence_args(kind, beta, top_k, topk_mode)
        check_same_shape(student_logits_BTV, targets[target], target)

    def chunk_fn(s_BCV, *t_BCVs):
        t_by_name = dict(zip(names, t_BCVs))
        return {
            key: _chunk_divergence(
                s_BCV, t_by_name[target], kind=kind, beta=beta, top_k=top_k, topk_mode=topk_mode
            )
            for key, (target, kind, beta, top_k) in requests.items()
        }

    return map_positions(
        chunk_fn, student_logits_BTV, *[targets[n] for n in names], chunk_size=chunk_size
    )


def _chunk_sampled_logprobs(logits_BCV, tokens_BC):
    x_BCV = upcast(logits_BCV)
    picked_BC = jnp.take_along_axis(x_BCV, tokens_BC[..., None], axis=-1)[..., 0]
    return picked_BC - jax.nn.logsumexp(x_BCV, axis=-1)


def sampled_logprobs(logits_BTV, tokens_BT, chunk_size=None):
    """log softmax(logits) at the sampled tokens, float32.

    Args:
      logits_BTV: logits aligned so that position n predicts tokens_BT[:, n].
      tokens_BT: int token ids.
      chunk_size: positions per chunk (None: one pass).

    Returns:
      logp_BT float32 (differentiable w.r.t. the logits).
    """
    check_logits("logits", logits_BTV)
    if tokens_BT.shape != logits_BTV.shape[:2]:
        raise ValueError(
            f"tokens {tokens_BT.shape} must match the logits' [B, T] = {logits_BTV.shape[:2]}"
        )
    return map_positions(_chunk_sampled_logprobs, logits_BTV, tokens_BT, chunk_size=chunk_size)


def _chunk_entropy(logits_BCV):
    logp_BCV = jax.nn.log_softmax(upcast(logits_BCV), axis=-1)
    return -_p_log_ratio(logp_BCV, jnp.zeros_like(logp_BCV))


def entropy(logits_BTV, chunk_size=None):
    """Entropy of softmax(logits) per position.

    Args:
      logits_BTV: logits.
      chunk_size: positions per chunk (None: one pass).

    Returns:
      ent_BT float32.
    """
    check_logits("logits", logits_BTV)
    return map_positions(_chunk_entropy, logits_BTV, chunk_size=chunk_size)


def _safe_div(num, den):
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _masked(x_BT, mask_BT):
    if x_BT.shape != mask_BT.shape:
        raise ValueError(f"values {x_BT.shape} and mask {mask_BT.shape} must match")
    m_BT = mask_BT.astype(jnp.float32)
    # where, not only multiply: a masked-out inf/NaN must not leak into a mean.
    return jnp.where(m_BT > 0, upcast(x_BT), 0.0) * m_BT, m_BT


def sequence_mean(x_BT, mask_BT):
    """Mean over each sequence's valid tokens, then over non-empty sequences.

    Args:
      x_BT: per-token values.
      mask_BT: bool, or float weights (0 = invalid).

    Returns:
      float32 scalar; 0 if no token is valid.
    """
    xm_BT, m_BT = _masked(x_BT, mask_BT)
    n_B = jnp.sum(m_BT, axis=1)
    per_seq_B = _safe_div(jnp.sum(xm_BT, axis=1), n_B)
    has_B = (n_B > 0).astype(jnp.float32)
    return _safe_div(jnp.sum(per_seq_B * has_B), jnp.sum(has_B))


def token_mean(x_BT, mask_BT):
    """Mean over all valid tokens of the batch.

    Args:
      x_BT: per-token values.
      mask_BT: bool, or float weights (0 = invalid).

    Returns:
      float32 scalar; 0 if no token is valid.
    """
    xm_BT, m_BT = _masked(x_BT, mask_BT)
    return _safe_div(jnp.sum(xm_BT), jnp.sum(m_BT))
