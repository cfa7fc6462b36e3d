"""Checkpoints whose embedding has more rows than the tokenizer has ids (Qwen3: 151,936 vs
151,669): the padded rows are never sampled and never enter a loss."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dopd_jax.losses import dopd_loss
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.steps import rollout, scoring

ROWS, VALID, EOS, PAD = 40, 29, 1, 0


def _models(tie: bool):
    """(padded model, same parameters seen without a vocabulary limit)."""
    full = ModelConfig(
        vocab_size=ROWS, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=48,
        tie_embeddings=tie,
    )  # fmt: skip
    graphdef, params = nnx.split(Transformer(full, rngs=nnx.Rngs(0)))
    # Make the padded rows dominate every softmax if they were ever projected.
    # (Scaled copies of real rows: their logits are the real ones times 100.)
    n = ROWS - VALID
    if tie:
        table = params["embed"]["embedding"][...]
        params["embed"]["embedding"][...] = table.at[VALID:].set(100.0 * table[:n])
    else:
        kernel = params["lm_head"]["kernel"][...]
        params["lm_head"]["kernel"][...] = kernel.at[:, VALID:].set(100.0 * kernel[:, :n])
    padded = dataclasses.replace(full, valid_vocab_size=VALID)
    padded_graphdef, _ = nnx.split(Transformer(padded, rngs=nnx.Rngs(0)))
    return (padded_graphdef, params), (graphdef, params)


def _prompts(b=6, width=5, seed=0):
    ids = jax.random.randint(jax.random.key(seed), (b, width), 2, VALID).astype(jnp.int32)
    return ids, jnp.ones((b, width), bool)


@pytest.mark.parametrize("tie", [True, False])
def test_logits_cover_only_the_real_vocabulary(tie):
    (g, params), (g_full, _) = _models(tie)
    prompt, mask = _prompts()
    tokens = jax.random.randint(jax.random.key(1), (6, 7), 2, VALID).astype(jnp.int32)
    logits = scoring.teacher_forced_logits(g, params, prompt, mask, tokens)
    full = scoring.teacher_forced_logits(g_full, params, prompt, mask, tokens)
    assert logits.shape == (6, 7, VALID) and full.shape == (6, 7, ROWS)
    np.testing.assert_allclose(logits, full[..., :VALID], rtol=1e-5, atol=1e-5)
    # Without the limit the padded rows win: the limit is what keeps them out.
    assert np.mean(np.asarray(full.argmax(-1)) >= VALID) > 0.5
    scanned = scoring.forward_logits(g, params, prompt, mask, tokens, remat=True)
    np.testing.assert_allclose(scanned, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_sampler_never_emits_a_padded_id(tie):
    (g, params), (g_full, _) = _models(tie)
    cfg = rollout.SamplerConfig(max_new_tokens=12, eos_id=EOS, pad_id=PAD, n_samples=4)
    prompt, mask = _prompts()
    sample = jax.jit(functools.partial(rollout.sample, cfg=cfg), static_argnums=0)
    for seed in range(3):
        ro = sample(g, params, prompt, mask, jax.random.key(seed))
        assert np.asarray(ro.tokens_BT).max() < VALID
        assert np.all(np.isfinite(np.asarray(ro.sampler_logp_BT)))
    ro_full = sample(g_full, params, prompt, mask, jax.random.key(0))
    assert np.asarray(ro_full.tokens_BT)[np.asarray(ro_full.mask_BT)].max() >= VALID


def test_losses_equal_those_of_padded_rows_masked_out():
    (g, params), (g_full, _) = _models(tie=False)
    prompt, mask = _prompts()
    tokens = jax.random.randint(jax.random.key(2), (6, 7), 2, VALID).astype(jnp.int32)
    valid = jnp.ones(tokens.shape, bool)
    noise = jax.random.normal(jax.random.key(3), (*tokens.shape, ROWS))
    logits = {}
    for name, graphdef in (("valid", g), ("full", g_full)):
        s = scoring.teacher_forced_logits(graphdef, params, prompt, mask, tokens)
        n = noise[..., : s.shape[-1]]
        logits[name] = (s, s + n, s - n)
    masked = tuple(x.at[..., VALID:].set(-1e9) for x in logits["full"])
    loss, _ = dopd_loss(*logits["valid"], tokens, valid, top_k=8)
    reference, _ = dopd_loss(*masked, tokens, valid, top_k=8)
    assert np.isfinite(float(loss)) and float(loss) > 0
    np.testing.assert_allclose(float(loss), float(reference), rtol=1e-5)
    unmasked, _ = dopd_loss(*logits["full"], tokens, valid, top_k=8)
    assert abs(float(unmasked) - float(loss)) > 1e-3 * abs(float(loss))
