"""Tests of rollout sampling and teacher-forced scoring."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.steps import rollout, sampling, scoring

V, EOS, PAD = 29, 1, 0
MODEL_CFG = ModelConfig(
    vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=48
)
BASE = rollout.SamplerConfig(max_new_tokens=8, eos_id=EOS, pad_id=PAD)


@pytest.fixture(scope="module")
def split():
    return nnx.split(Transformer(MODEL_CFG, rngs=nnx.Rngs(0)))


@functools.cache
def _sample_fn(graphdef, cfg):
    return jax.jit(functools.partial(rollout.sample, graphdef, cfg=cfg))


@functools.cache
def _score_fn(graphdef):
    return jax.jit(functools.partial(scoring.teacher_forced_logits, graphdef))


def _prompts(lengths, width, seed=0):
    """Left-padded random prompts (ids avoid EOS/PAD) of the given lengths."""
    ids = jax.random.randint(jax.random.key(seed), (len(lengths), width), 2, V)
    mask = np.arange(width)[None] >= width - np.array(lengths)[:, None]
    return jnp.where(mask, ids, PAD).astype(jnp.int32), jnp.asarray(mask)


def _run(split, cfg, lengths=(3, 6, 4), width=6, seed=0, key=0):
    graphdef, params = split
    prompt, mask = _prompts(lengths, width, seed)
    return _sample_fn(graphdef, cfg)(params, prompt, mask, jax.random.key(key))


def _score_rollout(split, ro):
    graphdef, params = split
    return _score_fn(graphdef)(params, ro.prompt_BP, ro.prompt_mask_BP, ro.tokens_BT)


def _check_invariants(ro, cfg):
    mask = np.asarray(ro.mask_BT)
    tokens = np.asarray(ro.tokens_BT)
    # The mask is a prefix of True that ends at the first EOS.
    assert np.all(mask[:, :-1] | ~mask[:, 1:])
    is_eos = (tokens == cfg.eos_id) & mask
    assert np.all(is_eos.sum(1) <= 1)
    ends = np.where(is_eos.any(1), is_eos.argmax(1) + 1, cfg.max_new_tokens)
    np.testing.assert_array_equal(mask.sum(1), ends)
    assert np.all(tokens[~mask] == cfg.pad_id)
    assert np.all(np.asarray(ro.sampler_logp_BT)[~mask] == 0)
    np.testing.assert_array_equal(ro.truncated_B, ~is_eos.any(1))


def test_greedy_is_argmax_of_score_and_stops_at_eos(split):
    free = _run(split, dataclasses.replace(BASE, greedy=True, eos_id=V + 5))
    tokens = np.asarray(free.tokens_BT)
    logits = _score_rollout(split, free)
    np.testing.assert_array_equal(np.argmax(logits, -1), tokens)
    assert np.all(free.mask_BT) and np.all(free.truncated_B)
    eos = int(tokens[0, 3])  # the greedy path does not depend on eos_id
    cfg = dataclasses.replace(BASE, greedy=True, eos_id=eos)
    ro = _run(split, cfg)
    _check_invariants(ro, cfg)
    stop = np.cumsum(np.cumsum(tokens == eos, 1), 1) <= 1  # up to 1st EOS
    np.testing.assert_array_equal(ro.mask_BT, stop)
    np.testing.assert_array_equal(ro.tokens_BT, np.where(stop, tokens, PAD))
    assert not bool(ro.truncated_B[0])


def test_left_padding_gives_same_greedy_continuation(split):
    cfg = dataclasses.replace(BASE, greedy=True)
    batch = _run(split, cfg, lengths=(2, 5, 3), width=7)
    prompt, mask = _prompts((2, 5, 3), 7)
    for i, n in enumerate((2, 5, 3)):
        alone = _sample_fn(split[0], cfg)(
            split[1], prompt[i : i + 1, -n:], mask[i : i + 1, -n:], jax.random.key(0)
        )
        np.testing.assert_array_equal(alone.tokens_BT[0], batch.tokens_BT[i])


def test_sampler_logp_equals_score_log_softmax(split):
    cfg = dataclasses.replace(BASE, n_samples=4)
    ro = _run(split, cfg)
    _check_invariants(ro, cfg)
    logp = jax.nn.log_softmax(_score_rollout(split, ro), -1)
    ref = jnp.take_along_axis(logp, ro.tokens_BT[..., None], -1)[..., 0]
    np.testing.assert_allclose(ro.sampler_logp_BT, jnp.where(ro.mask_BT, ref, 0), atol=1e-5)


def test_top_k_samples_inside_top_k_and_renormalizes(split):
    cfg = dataclasses.replace(BASE, top_k=3, temperature=2.0, n_samples=8)
    ro = _run(split, cfg)
    _check_invariants(ro, cfg)
    logits = np.asarray(_score_rollout(split, ro)) / 2.0
    kth = np.sort(logits, -1)[..., -3]
    chosen = np.take_along_axis(logits, np.asarray(ro.tokens_BT)[..., None], -1)[..., 0]
    mask = np.asarray(ro.mask_BT)
    assert np.all(chosen[mask] >= kth[mask])
    top = np.where(logits >= kth[..., None], logits, -np.inf)
    ref = chosen - np.log(np.exp(top - top.max(-1, keepdims=True)).sum(-1)) - top.max(-1)
    np.testing.assert_allclose(np.asarray(ro.sampler_logp_BT)[mask], ref[mask], atol=1e-5)


def test_top_p_samples_inside_nucleus(split):
    cfg = dataclasses.replace(BASE, top_p=0.5, n_samples=8)
    ro = _run(split, cfg)
    _check_invariants(ro, cfg)
    probs = np.asarray(jax.nn.softmax(_score_rollout(split, ro), -1), np.float64)
    tokens = np.asarray(ro.tokens_BT)
    chosen = np.take_along_axis(probs, tokens[..., None], -1)[..., 0]
    # Mass of strictly more probable tokens must be below top_p (nucleus).
    above = np.where(probs > chosen[..., None], probs, 0).sum(-1)
    mask = np.asarray(ro.mask_BT)
    assert np.all(above[mask] < 0.5 + 1e-5)
    assert np.all(np.asarray(ro.sampler_logp_BT)[mask] >= np.log(chosen[mask]) - 1e-5)


def test_top_p_tiny_keeps_top_token():
    logits = jnp.array([[0.0, 3.0, 1.0], [2.0, 2.5, -1.0]])
    tokens, logp = sampling.sample_tokens(
        logits, jax.random.key(0), temperature=1.0, top_k=0, top_p=1e-6, greedy=False
    )
    np.testing.assert_array_equal(tokens, [1, 1])
    np.testing.assert_allclose(logp, 0.0, atol=1e-6)


def test_determinism_and_key_dependence(split):
    a, b = _run(split, BASE, key=3), _run(split, BASE, key=3)
    chex.assert_trees_all_equal(a, b)
    c = _run(split, BASE, key=4)
    assert np.any(np.asarray(a.tokens_BT) != np.asarray(c.tokens_BT))


def test_n_samples_row_order(split):
    cfg = dataclasses.replace(BASE, n_samples=3)
    ro = _run(split, cfg)
    prompt, mask = _prompts((3, 6, 4), 6)
    np.testing.assert_array_equal(ro.prompt_BP, rollout.repeat_rows(np.asarray(prompt), 3))
    np.testing.assert_array_equal(ro.prompt_mask_BP, rollout.repeat_rows(mask, 3))
    assert ro.tokens_BT.shape == (9, 8)
    tokens = np.asarray(ro.tokens_BT)
    assert any(np.any(tokens[3 * i] != tokens[3 * i + 1]) for i in range(3))
    greedy = _run(split, dataclasses.replace(BASE, greedy=True, n_samples=2))
    single = _run(split, dataclasses.replace(BASE, greedy=True))
    np.testing.assert_array_equal(greedy.tokens_BT, rollout.repeat_rows(single.tokens_BT, 2))


def test_score_is_invariant_to_extra_left_padding(split):
    graphdef, params = split
    prefix, mask = _prompts((3, 5), 5)
    response = jax.random.randint(jax.random.key(9), (2, 6), 0, V)
    base = _score_fn(graphdef)(params, prefix, mask, response)
    assert base.shape == (2, 6, V)
    wide = jnp.concatenate([jnp.full((2, 4), 7, jnp.int32), prefix], 1)
    wide_mask = jnp.concatenate([jnp.zeros((2, 4), bool), mask], 1)
    padded = _score_fn(graphdef)(params, wide, wide_mask, response)
    np.testing.assert_allclose(padded, base, atol=1e-5)


def test_max_new_tokens_one_and_static_argnames_jit(split):
    graphdef, params = split
    cfg = dataclasses.replace(BASE, max_new_tokens=1)
    prompt, mask = _prompts((2, 4), 4)
    fn = jax.jit(rollout.sample, static_argnames=("graphdef", "cfg"))
    ro = fn(
        graphdef=graphdef,
        params=params,
        prompt_BP=prompt,
        prompt_mask_BP=mask,
        key=jax.random.key(0),
        cfg=cfg,
    )
    assert ro.tokens_BT.shape == (2, 1) and bool(jnp.all(ro.mask_BT))


def test_jitted_sample_does_not_retrace(split):
    graphdef, params = split
    traced = chex.assert_max_traces(rollout.sample, n=1)
    fn = jax.jit(functools.partial(traced, graphdef, cfg=BASE))
    for seed in (0, 1, 2):
        prompt, mask = _prompts((2, 4 - seed), 4, seed=seed)
        jax.block_until_ready(fn(params, prompt, mask, jax.random.key(seed)))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(n_samples=0), "n_samples"),
        (dict(temperature=0.0), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
    ],
)
def test_sampler_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(BASE, **overrides).validate()
    dataclasses.replace(BASE, temperature=0.0, greedy=True).validate()


@pytest.mark.parametrize(
    "mask_rows,max_len,match",
    [
        ([[0, 1, 1], [0, 0, 0]], 3, "empty prompt .* row 1"),
        ([[1, 1, 1], [0, 1, 1]], 2, "longer than max_prompt_len=2 in row 0"),
        ([[0, 1, 1], [1, 0, 1]], 3, "not left-padded .* in row 1"),
    ],
)
def test_validate_prompts_errors(mask_rows, max_len, match):
    mask = np.array(mask_rows, bool)
    with pytest.raises(ValueError, match=match):
        rollout.validate_prompts(np.ones(mask.shape, np.int32), mask, max_len)
    rollout.validate_prompts(np.ones((2, 3), np.int32), np.array([[0, 1, 1]] * 2, bool), 3)


def test_shape_errors_raise_before_compile(split):
    graphdef, params = split
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        rollout.sample(
            graphdef,
            params,
            jnp.ones((2, 3), jnp.int32),
            jnp.ones((2, 4), bool),
            jax.random.key(0),
            BASE,
        )
    with pytest.raises(ValueError, match="response"):
        scoring.teacher_forced_logits(
            graphdef,
            params,
            jnp.ones((2, 3), jnp.int32),
            jnp.ones((2, 3), bool),
            jnp.ones((3, 4), jnp.int32),
        )


def test_chunked_rollout_has_sample_row_order_and_per_chunk_keys(split):
    """Chunk c samples prompts c, c + C, ... with fold_in(key, c); rows come back in
    ``sample``'s order (row i * n + j = sample j of prompt i)."""
    graphdef, params = split
    cfg = dataclasses.replace(BASE, n_samples=2)
    prompt, mask = _prompts((3, 6, 4, 5, 2, 6), 6)
    key = jax.random.key(7)
    ro = rollout.sample_in_chunks(graphdef, params, prompt, mask, key, cfg, prompts_per_call=2)
    chunks = 3
    for c in range(chunks):
        rows = np.arange(c, 6, chunks)
        ref = rollout.sample(
            graphdef, params, prompt[rows], mask[rows], jax.random.fold_in(key, c), cfg
        )
        out_rows = (rows[:, None] * 2 + np.arange(2)).ravel()
        for field in ("tokens_BT", "mask_BT", "prompt_BP", "truncated_B"):
            np.testing.assert_array_equal(
                np.asarray(getattr(ro, field))[out_rows], np.asarray(getattr(ref, field))
            )
    whole = rollout.sample_in_chunks(graphdef, params, prompt, mask, key, cfg, prompts_per_call=0)
    direct = rollout.sample(graphdef, params, prompt, mask, key, cfg)
    np.testing.assert_array_equal(np.asarray(whole.tokens_BT), np.asarray(direct.tokens_BT))
    with pytest.raises(ValueError, match="does not divide"):
        rollout.sample_in_chunks(graphdef, params, prompt, mask, key, cfg, prompts_per_call=4)
