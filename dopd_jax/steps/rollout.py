"""Rollouts: the student samples its own responses (prefill + scan decode).

``sample`` is a pure function of ``(graphdef, params)`` from
``nnx.split(model)``. Jit them with the static arguments bound, e.g.::

  sample_fn = jax.jit(functools.partial(rollout.sample, graphdef, cfg=cfg))
  ro = sample_fn(params, prompt_BP, prompt_mask_BP, key)

(or ``jax.jit(rollout.sample, static_argnames=("graphdef", "cfg"))``).
Prompts are left-padded, so every row's last prompt slot is a real token and
the response starts at the same column for all rows.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dopd_jax.models import transformer
from dopd_jax.steps import sampling


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Static sampling settings (hashable: usable as a static jit argument)."""

    max_new_tokens: int
    eos_id: int
    pad_id: int
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    greedy: bool = False
    n_samples: int = 1

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field."""
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 unless greedy, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rollout:
    """Sampled responses; row i*n + j is sample j of prompt i (n = n_samples)."""

    prompt_BP: jax.Array  # int32, left-padded prompt ids, rows repeated
    prompt_mask_BP: jax.Array  # bool, True on real prompt tokens
    tokens_BT: jax.Array  # int32, sampled ids; pad_id after the first EOS
    mask_BT: jax.Array  # bool, True up to and including the first EOS
    sampler_logp_BT: jax.Array  # float32, log-prob under the sampling dist.; 0 off-mask
    truncated_B: jax.Array  # bool, True when no EOS within max_new_tokens
    # Set by the step or the host loop where a method needs them (None otherwise):
    domain_B: jax.Array | None = None  # int32, each row's domain index (DistillSpec.domains)
    on_policy_B: jax.Array | None = None  # bool, True where the student sampled the row
    reward_B: jax.Array | None = None  # float32, the task verifier's reward of the row
    advantage_B: jax.Array | None = None  # float32, the row's group-normalized reward (GRPO)


def repeat_rows(x, n: int):
    """Repeats each row n times in place (row i*n + j = copy j of row i).

    Works on NumPy and JAX arrays alike; matches ``sample``'s row order.
    """
    return x.repeat(n, axis=0)


def validate_prompts(prompt_BP, prompt_mask_BP, max_prompt_len: int) -> None:
    """Host-side checks of a left-padded prompt batch; raises ValueError.

    Args:
      prompt_BP: int token ids [B, P].
      prompt_mask_BP: bool, True on real tokens [B, P].
      max_prompt_len: largest allowed number of real tokens per row.
    """
    prompt_BP, mask_BP = np.asarray(prompt_BP), np.asarray(prompt_mask_BP)
    check_prefix(prompt_BP, mask_BP, "prompt")
    mask_BP = mask_BP.astype(bool)
    lengths_B = mask_BP.sum(axis=1)
    for name, bad_B in (
        ("empty prompt (no real token)", lengths_B == 0),
        (f"prompt longer than max_prompt_len={max_prompt_len}", lengths_B > max_prompt_len),
        (
            "prompt mask not left-padded (pad after a real token)",
            np.any(mask_BP[:, :-1] & ~mask_BP[:, 1:], axis=1),
        ),
    ):
        if bad_B.any():
            row = int(np.argmax(bad_B))
            raise ValueError(f"{name} in row {row}: mask={mask_BP[row].astype(int)}")


def check_prefix(ids_BP, mask_BP, what: str) -> None:
    if ids_BP.ndim != 2 or ids_BP.shape != mask_BP.shape:
        raise ValueError(
            f"{what} ids {ids_BP.shape} and mask {mask_BP.shape} must be equal 2-D shapes [B, P]"
        )
    if ids_BP.shape[1] < 1:
        raise ValueError(f"{what} must have at least one column")
    if not jnp.issubdtype(ids_BP.dtype, jnp.integer):
        raise ValueError(f"{what} ids must be integers, got {ids_BP.dtype}")


def sample(graphdef, params, prompt_BP, prompt_mask_BP, key, cfg: SamplerConfig) -> Rollout:
    """Samples ``cfg.n_samples`` responses per left-padded prompt.

    The prompt is prefilled into a static KV cache in one call, then a
    ``lax.scan`` decodes one token per step; rows that emitted EOS keep
    emitting ``pad_id`` with mask False. Step t uses ``fold_in(key, t)``.

    Args:
      graphdef: static half of ``nnx.split(model)``.
      params: parameter state of the model.
      prompt_BP: int32 left-padded prompt ids (one row per prompt).
      prompt_mask_BP: bool, True on real prompt tokens; every row non-empty.
      key: PRNG key.
      cfg: sampler settings (static).

    Returns:
      Rollout with B = prompts * n_samples rows and T = max_new_tokens.
    """
    cfg.validate()
    check_prefix(prompt_BP, prompt_mask_BP, "prompt")
    model = nnx.merge(graphdef, params)
    prompt_BP = repeat_rows(jnp.asarray(prompt_BP, jnp.int32), cfg.n_samples)
    mask_BP = repeat_rows(jnp.asarray(prompt_mask_BP, bool), cfg.n_samples)
    (b, p), t = prompt_BP.shape, cfg.max_new_tokens
    cache = transformer.init_cache(model.cfg, b, p + t - 1)
    # Left padding puts every row's last real prompt token at position P - 1.
    logits_B1V, cache = model.decode(
        prompt_BP, transformer.default_positions(mask_BP), cache, mask_BP, last_only=True
    )
    n_real_B = mask_BP.sum(axis=1).astype(jnp.int32)
    pick = lambda logits_BV, step: sampling.sample_tokens(
        logits_BV,
        jax.random.fold_in(key, step),
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        greedy=cfg.greedy,
    )

    def step_fn(carry, step):
        cache, prev_B, prev_live_B = carry
        logits_B1V, cache = model.decode(
            prev_B[:, None], (n_real_B + step - 1)[:, None], cache, prev_live_B[:, None]
        )
        tok_B, logp_B = pick(logits_B1V[:, 0], step)
        live_B = prev_live_B & (prev_B != cfg.eos_id)
        out = (jnp.where(live_B, tok_B, cfg.pad_id), live_B, jnp.where(live_B, logp_B, 0.0))
        return (cache, out[0], live_B), out

    tok0_B, logp0_B = pick(logits_B1V[:, 0], 0)
    live0_B = jnp.ones((b,), bool)
    _, (toks_TB, live_TB, logp_TB) = jax.lax.scan(
        step_fn, (cache, tok0_B, live0_B), jnp.arange(1, t)
    )
    tokens_BT = jnp.concatenate([tok0_B[:, None], toks_TB.T], axis=1)
    mask_BT = jnp.concatenate([live0_B[:, None], live_TB.T], axis=1)
    logp_BT = jnp.concatenate([logp0_B[:, None], logp_TB.T], axis=1)
    return Rollout(
        prompt_BP=prompt_BP,
        prompt_mask_BP=mask_BP,
        tokens_BT=tokens_BT,
        mask_BT=mask_BT,
        sampler_logp_BT=logp_BT,
        truncated_B=~jnp.any(mask_BT & (tokens_BT == cfg.eos_id), 1),
    )


def sample_in_chunks(
    graphdef, params, prompt_BP, prompt_mask_BP, key, cfg: SamplerConfig, prompts_per_call: int
) -> Rollout:
    """``sample`` over prompt chunks of ``prompts_per_call`` (one ``lax.map`` step each).

    The KV cache and the step's activations then scale with the chunk, not the
    batch. Chunk c holds prompts c, c + C, c + 2C, ... (C chunks), so rows sharded
    in contiguous blocks over the data-parallel devices stay spread evenly over all
    of them; the result has ``sample``'s row order. Chunk c samples with
    ``fold_in(key, c)``.
    """
    b = prompt_BP.shape[0]
    if prompts_per_call <= 0 or prompts_per_call >= b:
        return sample(graphdef, params, prompt_BP, prompt_mask_BP, key, cfg)
    if b % prompts_per_call:
        raise ValueError(f"rollout_batch={prompts_per_call} does not divide the {b} prompts")
    chunks = b // prompts_per_call

    def split(x):  # [B, ...] -> [C, B/C, ...]; chunk c holds rows c, c + C, ...
        return jnp.swapaxes(x.reshape(prompts_per_call, chunks, *x.shape[1:]), 0, 1)

    def one(args):
        prompt, mask, c = args
        return sample(graphdef, params, prompt, mask, jax.random.fold_in(key, c), cfg)

    ro_C = jax.lax.map(one, (split(prompt_BP), split(prompt_mask_BP), jnp.arange(chunks)))

    def merge(x):  # [C, (B/C) * n, ...] -> [B * n, ...] in sample's order
        x = x.reshape(chunks, prompts_per_call, cfg.n_samples, *x.shape[2:])
        return jnp.swapaxes(x, 0, 1).reshape(b * cfg.n_samples, *x.shape[3:])

    return jax.tree.map(merge, ro_C)
