"""Transformer building blocks: RMSNorm, rotary embeddings, GQA attention, SwiGLU.

Parameter names follow the Hugging Face Llama/Qwen3 modules (``q_proj``,
``gate_proj``, ``input_norm`` ...) and every kernel is stored ``[in, out]``,
so an importer only transposes HF ``weight`` matrices.

Attention works on "slots": indices into the key sequence (the full sequence
for a plain forward, the KV cache for decoding). Causality compares slots,
while rotary embeddings use the separate token positions, so left padding
shifts slots but not positions.
"""

from __future__ import annotations

import typing

import jax
import jax.numpy as jnp
from flax import nnx

if typing.TYPE_CHECKING:
    from dopd_jax.models.transformer import ModelConfig

# Finite stand-in for -inf: a fully masked row (a pad query) then yields a
# harmless uniform average instead of NaN.
_MASKED_SCORE = -1e30


class RMSNorm(nnx.Module):
    """Root-mean-square norm; statistics in float32, output in compute dtype."""

    def __init__(self, dim: int, *, eps: float, dtype, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        x32_BTD = x_BTD.astype(jnp.float32)
        var_BT1 = jnp.mean(jnp.square(x32_BTD), axis=-1, keepdims=True)
        normed_BTD = (x32_BTD * jax.lax.rsqrt(var_BT1 + self.eps)).astype(self.dtype)
        # Cast before scaling, as Hugging Face does, so imported weights match.
        return normed_BTD * self.scale[...].astype(self.dtype)


def apply_rope(x_BTNE: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding in the Llama/Qwen ``rotate_half`` convention.

    Args:
      x_BTNE: queries or keys, [B, T, heads, E] with E even.
      positions_BT: int token positions.
      theta: rotary base.

    Returns:
      Rotated array, same shape and dtype as ``x_BTNE``.
    """
    half = x_BTNE.shape[-1] // 2
    inv_freq_F = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles_BTF = positions_BT.astype(jnp.float32)[..., None] * inv_freq_F
    cos_BT1E = jnp.cos(jnp.concatenate([angles_BTF] * 2, -1))[:, :, None, :]
    sin_BT1E = jnp.sin(jnp.concatenate([angles_BTF] * 2, -1))[:, :, None, :]
    x32 = x_BTNE.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos_BT1E + rotated * sin_BT1E).astype(x_BTNE.dtype)


def attend(
    q_BTHE: jax.Array,
    k_BSGE: jax.Array,
    v_BSGE: jax.Array,
    q_slots_T: jax.Array,
    kv_mask_BS: jax.Array,
) -> jax.Array:
    """Causal grouped-query attention over key slots.

    Args:
      q_BTHE: queries (already rotated); H must be a multiple of G.
      k_BSGE: keys (already rotated).
      v_BSGE: values.
      q_slots_T: key slot of each query, so a query sees keys at slots <= its own.
      kv_mask_BS: bool, False on pad keys, which are never attended to.

    Returns:
      Attention output [B, T, H, E] in the query dtype.
    """
    b, t, h, e = q_BTHE.shape
    g = k_BSGE.shape[2]
    q_BTGRE = q_BTHE.reshape(b, t, g, h // g, e)
    scores_BGRTS = (
        jnp.einsum("btgre,bsge->bgrts", q_BTGRE, k_BSGE, preferred_element_type=jnp.float32)
        * e**-0.5
    )
    causal_TS = jnp.arange(k_BSGE.shape[1])[None, :] <= q_slots_T[:, None]
    allowed_BTS = causal_TS[None] & kv_mask_BS[:, None, :]
    scores_BGRTS = jnp.where(allowed_BTS[:, None, None], scores_BGRTS, _MASKED_SCORE)
    probs_BGRTS = jax.nn.softmax(scores_BGRTS, axis=-1).astype(v_BSGE.dtype)
    out_BTGRE = jnp.einsum("bgrts,bsge->btgre", probs_BGRTS, v_BSGE)
    return out_BTGRE.reshape(b, t, h, e)


def _attend_one(q_B1HE, k_BGSE, v_BGSE, q_slots_1, kv_mask_BS) -> jax.Array:
    """One query per row against a ``[B, G, S, E]`` cache, as broadcast multiply-and-sum.

    A [B, 1] x [B, S] batched dot per head group is a poor fit for the CPU's
    matmul kernels; written elementwise over a cache whose slots are contiguous
    per head group, XLA fuses the score, the mask and the weighted sum into
    passes that read the cache once each (benchmarks/README.md).
    """
    b, _, h, e = q_B1HE.shape
    g = k_BGSE.shape[1]
    q_BGR1E = q_B1HE.reshape(b, g, h // g, 1, e).astype(jnp.float32)
    scores_BGRS = jnp.sum(q_BGR1E * k_BGSE.astype(jnp.float32)[:, :, None], axis=-1) * e**-0.5
    allowed_BS = (jnp.arange(k_BGSE.shape[2]) <= q_slots_1[0])[None] & kv_mask_BS
    scores_BGRS = jnp.where(allowed_BS[:, None, None], scores_BGRS, _MASKED_SCORE)
    probs_BGRS = jax.nn.softmax(scores_BGRS, axis=-1).astype(v_BGSE.dtype)
    out_BGRE = jnp.sum(probs_BGRS[..., None] * v_BGSE[:, :, None], axis=3)
    return out_BGRE.reshape(b, 1, h, e).astype(q_B1HE.dtype)


def _linear(d_in: int, d_out: int, cfg: ModelConfig, rngs: nnx.Rngs):
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=False,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.params_dtype,
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Grouped-query self-attention with optional Qwen3 QK-norm."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.q_proj = _linear(cfg.d_model, cfg.n_heads * cfg.head_dim, cfg, rngs)
        self.k_proj = _linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg, rngs)
        self.v_proj = _linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg, rngs)
        self.o_proj = _linear(cfg.n_heads * cfg.head_dim, cfg.d_model, cfg, rngs)
        if cfg.qk_norm:
            norm_kw = dict(eps=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
            self.q_norm = RMSNorm(cfg.head_dim, **norm_kw)
            self.k_norm = RMSNorm(cfg.head_dim, **norm_kw)

    def __call__(self, x_BTD, positions_BT, kv_mask_BS, cache_kv=None, index=None):
        """Attends from T new tokens; returns (out_BTD, (keys, values)).

        Without ``cache_kv`` the keys are the T tokens themselves (S = T) and
        come back as ``(k_BTGE, v_BTGE)``. With ``cache_kv = (k_BGSE, v_BGSE)``
        the new keys/values are written at slot
        ``index`` first and the updated cache arrays are returned.
        """
        cfg = self.cfg
        b, t, _ = x_BTD.shape
        q_BTHE = self.q_proj(x_BTD).reshape(b, t, cfg.n_heads, cfg.head_dim)
        k_BTGE = self.k_proj(x_BTD).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
        v_BTGE = self.v_proj(x_BTD).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q_BTHE, k_BTGE = self.q_norm(q_BTHE), self.k_norm(k_BTGE)
        q_BTHE = apply_rope(q_BTHE, positions_BT, cfg.rope_theta)
        k_BTGE = apply_rope(k_BTGE, positions_BT, cfg.rope_theta)
        if cache_kv is None:
            out_BTHE = attend(q_BTHE, k_BTGE, v_BTGE, jnp.arange(t), kv_mask_BS)
            return self.o_proj(out_BTHE.reshape(b, t, -1)), (k_BTGE, v_BTGE)
        # The cache is [B, G, S, E]: each head group's slots are contiguous, so a
        # decode step's attention streams them (benchmarks/README.md).
        k_BGSE, v_BGSE = (
            jax.lax.dynamic_update_slice(
                c_BGSE, new_BTGE.transpose(0, 2, 1, 3).astype(c_BGSE.dtype), (0, 0, index, 0)
            )
            for c_BGSE, new_BTGE in zip(cache_kv, (k_BTGE, v_BTGE))
        )
        q_slots_T = index + jnp.arange(t)
        if t == 1:
            out_BTHE = _attend_one(q_BTHE, k_BGSE, v_BGSE, q_slots_T, kv_mask_BS)
        else:
            out_BTHE = attend(
                q_BTHE,
                k_BGSE.transpose(0, 2, 1, 3).astype(q_BTHE.dtype),
                v_BGSE.transpose(0, 2, 1, 3).astype(q_BTHE.dtype),
                q_slots_T,
                kv_mask_BS,
            )
        return self.o_proj(out_BTHE.reshape(b, t, -1)), (k_BGSE, v_BGSE)


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.gate_proj = _linear(cfg.d_model, cfg.d_ff, cfg, rngs)
        self.up_proj = _linear(cfg.d_model, cfg.d_ff, cfg, rngs)
        self.down_proj = _linear(cfg.d_ff, cfg.d_model, cfg, rngs)

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD))


class Block(nnx.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        norm_kw = dict(eps=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
        self.input_norm = RMSNorm(cfg.d_model, **norm_kw)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.d_model, **norm_kw)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_BTD, positions_BT, kv_mask_BS, cache_kv=None, index=None):
        """Returns (x_BTD, (keys, values)); see ``Attention.__call__``."""
        attn_BTD, kv = self.attn(self.input_norm(x_BTD), positions_BT, kv_mask_BS, cache_kv, index)
        x_BTD = x_BTD + attn_BTD
        return x_BTD + self.mlp(self.post_attn_norm(x_BTD)), kv
