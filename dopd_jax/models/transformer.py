"""Decoder-only transformer of the Llama / Qwen3 family, with a static KV cache.

Parameter tree (kernels ``[in, out]``)::

  embed.embedding                                [V, D]
  layers[i].input_norm.scale                     [D]
  layers[i].attn.{q_proj,k_proj,v_proj,o_proj}.kernel
  layers[i].attn.{q_norm,k_norm}.scale           [E]  (qk_norm only)
  layers[i].post_attn_norm.scale                 [D]
  layers[i].mlp.{gate_proj,up_proj,down_proj}.kernel
  final_norm.scale                               [D]
  lm_head.kernel                                 [D, V]  (untied only)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dopd_jax.models import layers

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (static, hashable)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    rope_theta: float = 10000.0
    qk_norm: bool = False
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    param_dtype: str = "float32"
    dtype: str = "float32"
    # Ids the tokenizer can produce. Real checkpoints pad the embedding past the
    # tokenizer (Qwen3: 151,936 rows, 151,669 tokens); with ``valid_vocab_size`` set,
    # logits cover only ids < valid_vocab_size, so samplers never emit a padded id
    # and every loss normalises over the same real vocabulary. None: all rows.
    valid_vocab_size: int | None = None

    def validate(self) -> None:
        """Raises ValueError naming the first inconsistent field."""
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "d_ff",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_heads={self.n_heads} must be a multiple "
                f"of n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even (RoPE)")
        if not self.rope_theta > 0 or not self.norm_eps > 0:
            raise ValueError(
                "ModelConfig.rope_theta and norm_eps must be positive, "
                f"got {self.rope_theta!r}, {self.norm_eps!r}"
            )
        valid = self.valid_vocab_size
        if valid is not None and not (isinstance(valid, int) and 1 <= valid <= self.vocab_size):
            raise ValueError(
                f"ModelConfig.valid_vocab_size={valid!r} must be an int in [1, vocab_size="
                f"{self.vocab_size}]"
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(
                    f"ModelConfig.{name}={getattr(self, name)!r} is not one of {sorted(_DTYPES)}"
                )

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def params_dtype(self):
        return _DTYPES[self.param_dtype]

    @property
    def logit_vocab_size(self) -> int:
        """V of the logits: the real vocabulary (``valid_vocab_size``) or every row."""
        return self.vocab_size if self.valid_vocab_size is None else self.valid_vocab_size


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Static-size key/value cache; slot ``s`` holds the s-th fed token.

    Rows are independent: a left-padded prompt occupies its pad slots with
    ``mask_BS`` False, so they are never attended to.
    """

    # [B, G, S, E]: a head group's slots are contiguous, which a decode step's
    # one-query attention streams through (benchmarks/README.md).
    k_BGSE: tuple[jax.Array, ...]  # per layer, compute dtype, rotated keys
    v_BGSE: tuple[jax.Array, ...]  # per layer, compute dtype, values
    mask_BS: jax.Array  # bool, True on written non-pad slots
    index: jax.Array  # int32 scalar, next slot to write


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """Empty cache for ``batch`` rows and ``max_len`` slots.

    Args:
      cfg: model config.
      batch: number of rows B.
      max_len: number of slots S (prompt length + tokens to decode).
      dtype: cache dtype; defaults to the compute dtype.

    Returns:
      KVCache with zero keys/values, all-False mask and index 0.
    """
    dtype = cfg.compute_dtype if dtype is None else dtype
    shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers))
    return KVCache(
        k_BGSE=zeros,
        v_BGSE=zeros,
        mask_BS=jnp.zeros((batch, max_len), bool),
        index=jnp.zeros((), jnp.int32),
    )


def default_positions(mask_BL: jax.Array) -> jax.Array:
    """Positions that start at 0 on each row's first real token (left padding)."""
    return jnp.maximum(jnp.cumsum(mask_BL.astype(jnp.int32), axis=1) - 1, 0)


class Transformer(nnx.Module):
    """Pre-norm decoder: embed -> n_layers x Block -> final_norm -> logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.embed = nnx.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            rngs=rngs,
            embedding_init=nnx.initializers.normal(cfg.d_model**-0.5),
        )
        self.layers = nnx.List([layers.Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm = layers.RMSNorm(
            cfg.d_model, eps=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype
        )
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Linear(
                cfg.d_model,
                cfg.vocab_size,
                use_bias=False,
                dtype=cfg.compute_dtype,
                param_dtype=cfg.params_dtype,
                rngs=rngs,
            )

    def hidden(self, tokens_BL, *, positions_BL=None, mask_BL=None):
        """Final-normed hidden states [B, L, D] (compute dtype), no cache."""
        if mask_BL is None:
            mask_BL = jnp.ones(tokens_BL.shape, bool)
        if positions_BL is None:
            positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
        x_BLD = self.embed(tokens_BL)
        for block in self.layers:
            x_BLD, _ = block(x_BLD, positions_BL, mask_BL)
        return self.final_norm(x_BLD)

    def logits(self, h_BTD: jax.Array) -> jax.Array:
        """Projects hidden states to logits [B, T, V] in the compute dtype.

        V is ``cfg.logit_vocab_size``: padded embedding rows are never projected.
        """
        v = self.cfg.logit_vocab_size
        if self.cfg.tie_embeddings:
            table_VD = self.embed.embedding[:v].astype(h_BTD.dtype)
            return jnp.einsum("btd,vd->btv", h_BTD, table_VD)
        if v == self.cfg.vocab_size:
            return self.lm_head(h_BTD)
        kernel_DV = self.lm_head.kernel[:, :v].astype(h_BTD.dtype)
        return jnp.einsum("btd,dv->btv", h_BTD, kernel_DV)

    def __call__(self, tokens_BL, *, positions_BL=None, mask_BL=None):
        """Full causal forward.

        Args:
          tokens_BL: int32 token ids.
          positions_BL: int rotary positions; defaults to arange(L). For
            left-padded rows pass ``default_positions(mask_BL)``.
          mask_BL: bool, False on pad tokens (never attended to); default all True.

        Returns:
          logits_BLV in the compute dtype.
        """
        return self.logits(self.hidden(tokens_BL, positions_BL=positions_BL, mask_BL=mask_BL))

    def decode(self, tokens_BT, positions_BT, cache: KVCache, mask_BT, *, last_only=False):
        """Feeds T tokens through the cache at ``cache.index`` (prefill or step).

        Args:
          tokens_BT: int32 ids of the new tokens.
          positions_BT: int rotary positions of the new tokens.
          cache: KVCache with at least ``index + T`` slots.
          mask_BT: bool, False on pad tokens.
          last_only: project only the last position to the vocabulary (a prefill
            needs just that one; [B, P, V] logits of a long prompt are large).

        Returns:
          (logits_BTV, new_cache) with the index advanced by T; T = 1 in the
          logits when ``last_only``.
        """
        index = cache.index
        mask_BS = jax.lax.dynamic_update_slice(cache.mask_BS, mask_BT.astype(bool), (0, index))
        x_BTD = self.embed(tokens_BT)
        new_k, new_v = [], []
        for block, k_BGSE, v_BGSE in zip(self.layers, cache.k_BGSE, cache.v_BGSE):
            x_BTD, (k_BGSE, v_BGSE) = block(x_BTD, positions_BT, mask_BS, (k_BGSE, v_BGSE), index)
            new_k.append(k_BGSE)
            new_v.append(v_BGSE)
        if last_only:
            x_BTD = x_BTD[:, -1:]
        logits_BTV = self.logits(self.final_norm(x_BTD))
        new_cache = KVCache(
            k_BGSE=tuple(new_k),
            v_BGSE=tuple(new_v),
            mask_BS=mask_BS,
            index=index + tokens_BT.shape[1],
        )
        return logits_BTV, new_cache
