"""Divergences, sampled log-probs, entropy and masked means vs NumPy (float64)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dopd_jax.losses import divergences as dv

B, T, V, K = 3, 7, 11, 4
KINDS = ("fkl", "rkl", "jsd")
# (top_k, topk_mode): full vocabulary, top-K renormalized, top-K generalized.
GRANULARITIES = ((None, "renormalize"), (K, "renormalize"), (K, "generalized"))
CASES = list(itertools.product(KINDS, GRANULARITIES))


def _logits(seed, scale=2.0, shape=(B, T, V)):
    return scale * np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _mask(seed=7):
    mask = np.random.default_rng(seed).random((B, T)) < 0.7
    mask[0, :] = True
    mask[2, :] = False  # one fully masked row
    return mask


def np_softmax(x):
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_divergence(s_logits, t_logits, kind, beta=0.5, top_k=None, mode="renormalize"):
    """Independent float64 reference over probabilities."""
    s, t = np_softmax(s_logits), np_softmax(t_logits)
    restricted = top_k is not None and top_k < s.shape[-1]
    if restricted:
        idx = np.argsort(-t, axis=-1, kind="stable")[..., :top_k]
        s, t = np.take_along_axis(s, idx, -1), np.take_along_axis(t, idx, -1)
        if mode == "renormalize":
            s, t = s / s.sum(-1, keepdims=True), t / t.sum(-1, keepdims=True)
    generalized = restricted and mode == "generalized"
    if kind == "fkl":
        return (t * np.log(t / s) + (s - t if generalized else 0)).sum(-1)
    if kind == "rkl":
        return (s * np.log(s / t) + (t - s if generalized else 0)).sum(-1)
    m = beta * t + (1 - beta) * s
    return (beta * t * np.log(t / m) + (1 - beta) * s * np.log(s / m)).sum(-1)


def np_sequence_mean(x, mask):
    per_seq = [x[b][mask[b]].mean() for b in range(x.shape[0]) if mask[b].any()]
    return np.mean(per_seq) if per_seq else 0.0


@pytest.mark.parametrize("kind,gran", CASES)
def test_matches_numpy(kind, gran):
    top_k, mode = gran
    s, t, mask = _logits(0), _logits(1), _mask()
    beta = 0.3 if kind == "jsd" else 0.5
    got = dv.token_divergence(
        jnp.asarray(s), jnp.asarray(t), kind=kind, beta=beta, top_k=top_k, topk_mode=mode
    )
    want = np_divergence(s, t, kind, beta, top_k, mode)
    assert got.dtype == jnp.float32 and got.shape == (B, T)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(
        dv.sequence_mean(got, jnp.asarray(mask)), np_sequence_mean(want, mask), rtol=2e-5, atol=2e-6
    )
    np.testing.assert_allclose(
        dv.token_mean(got, jnp.asarray(mask)), want[mask].mean(), rtol=2e-5, atol=2e-6
    )


@pytest.mark.parametrize(
    "kind,mode", list(itertools.product(KINDS, ("renormalize", "generalized")))
)
def test_top_k_larger_than_vocab_is_full(kind, mode):
    s, t = jnp.asarray(_logits(2)), jnp.asarray(_logits(3))
    full = dv.token_divergence(s, t, kind=kind)
    clamped = dv.token_divergence(s, t, kind=kind, top_k=V + 5, topk_mode=mode)
    np.testing.assert_allclose(clamped, full, rtol=1e-6)
    np.testing.assert_allclose(
        full, np_divergence(_logits(2), _logits(3), kind), rtol=2e-5, atol=2e-6
    )


def _loss(s, t, mask, kind, top_k, mode, chunk_size):
    div = dv.token_divergence(s, t, kind=kind, top_k=top_k, topk_mode=mode, chunk_size=chunk_size)
    return dv.sequence_mean(div, mask), div


@pytest.mark.parametrize("kind,gran", CASES)
def test_chunked_equals_unchunked_with_grads(kind, gran):
    top_k, mode = gran
    s, t, mask = jnp.asarray(_logits(4)), jnp.asarray(_logits(5)), jnp.asarray(_mask())
    grad = jax.jit(jax.value_and_grad(_loss, has_aux=True), static_argnums=(3, 4, 5, 6))
    (l1, d1), g1 = grad(s, t, mask, kind, top_k, mode, None)
    (l2, d2), g2 = grad(s, t, mask, kind, top_k, mode, 3)  # 3 does not divide T
    np.testing.assert_allclose(d2, d1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(l2, l1, rtol=1e-6)
    np.testing.assert_allclose(g2, g1, rtol=1e-5, atol=1e-8)
    assert np.abs(np.asarray(g1)).max() > 1e-4


@pytest.mark.parametrize("kind,top_k", [("rkl", 64), ("jsd", None)])
def test_chunking_bounds_float32_memory(kind, top_k):
    """Chunked forward and backward keep well under one [B, T, V] float32."""
    shape = (1, 64, 2048)
    full_bytes = 4 * np.prod(shape)
    x = jnp.zeros(shape, jnp.float32)

    def temp_bytes(chunk_size, grad):
        fn = lambda s, t: jnp.sum(
            dv.token_divergence(s, t, kind=kind, top_k=top_k, chunk_size=chunk_size)
        )
        fn = jax.grad(fn) if grad else fn
        return jax.jit(fn).lower(x, x).compile().memory_analysis().temp_size_in_bytes

    for grad in (False, True):
        assert temp_bytes(None, grad) >= 1.5 * full_bytes  # the guard can fail
        assert temp_bytes(8, grad) <= 0.8 * full_bytes


def test_jit_matches_eager_and_bf16_upcasts():
    s, t = jnp.asarray(_logits(6)), jnp.asarray(_logits(7))
    fn = lambda a, b: dv.token_divergence(a, b, kind="jsd", top_k=K, chunk_size=2)
    np.testing.assert_allclose(jax.jit(fn)(s, t), fn(s, t), rtol=1e-6, atol=1e-7)
    s16, t16 = s.astype(jnp.bfloat16), t.astype(jnp.bfloat16)
    got = fn(s16, t16)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(
        got, fn(s16.astype(jnp.float32), t16.astype(jnp.float32)), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("kind,gran", CASES)
def test_zero_iff_equal_and_nonnegative(kind, gran):
    top_k, mode = gran
    s = jnp.asarray(_logits(8))
    same = dv.token_divergence(s, s + 3.0, kind=kind, top_k=top_k, topk_mode=mode)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)
    diff = dv.token_divergence(s, jnp.asarray(_logits(9)), kind=kind, top_k=top_k, topk_mode=mode)
    assert float(diff.min()) > 0.0


@pytest.mark.parametrize("kind,gran", CASES)
def test_gradient_matches_finite_differences(kind, gran):
    top_k, mode = gran
    with jax.enable_x64(True):
        s = jnp.asarray(_logits(10, shape=(2, 3, 6)), jnp.float64)
        t = jnp.asarray(_logits(11, shape=(2, 3, 6)), jnp.float64)
        w = jnp.asarray(np.random.default_rng(12).random((2, 3)))
        fn = jax.jit(
            lambda x: jnp.sum(
                w
                * dv.token_divergence(
                    x, t, kind=kind, beta=0.4, top_k=top_k and 3, topk_mode=mode, chunk_size=2
                )
            )
        )
        check_grads(fn, (s,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind,gran", CASES)
def test_no_gradient_reaches_target(kind, gran):
    top_k, mode = gran
    s, t = jnp.asarray(_logits(13)), jnp.asarray(_logits(14))
    for chunk in (None, 3):
        g = jax.grad(
            lambda b: jnp.sum(
                dv.token_divergence(s, b, kind=kind, top_k=top_k, topk_mode=mode, chunk_size=chunk)
            )
        )(t)
        assert np.all(np.asarray(g) == 0.0)


def test_jsd_beta_edges_are_zero_and_finite():
    s, t = jnp.asarray(_logits(15)), jnp.asarray(_logits(16))
    for beta in (0.0, 1.0):
        val, g = jax.value_and_grad(
            lambda x: jnp.sum(dv.token_divergence(x, t, kind="jsd", beta=beta))
        )(s)
        np.testing.assert_allclose(val, 0.0, atol=1e-5)
        assert np.all(np.isfinite(np.asarray(g)))


def test_sampled_logprobs_and_entropy_match_numpy():
    x = _logits(17)
    tokens = np.random.default_rng(18).integers(0, V, (B, T))
    p = np_softmax(x)
    want_logp = np.log(np.take_along_axis(p, tokens[..., None], -1)[..., 0])
    want_ent = -(p * np.log(p)).sum(-1)
    for chunk in (None, 2):
        got = dv.sampled_logprobs(jnp.asarray(x), jnp.asarray(tokens), chunk)
        np.testing.assert_allclose(got, want_logp, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            dv.entropy(jnp.asarray(x), chunk), want_ent, rtol=1e-5, atol=1e-6
        )


def test_means_handle_empty_masks_and_float_masks():
    x = jnp.asarray(np.arange(B * T, dtype=np.float32).reshape(B, T))
    empty = jnp.zeros((B, T), bool)
    assert float(dv.sequence_mean(x, empty)) == 0.0
    assert float(dv.token_mean(x, empty)) == 0.0
    mask = _mask()
    x_nan = jnp.where(jnp.asarray(mask), x, jnp.nan)  # masked NaNs must not leak
    want = np_sequence_mean(np.asarray(x), mask)
    np.testing.assert_allclose(dv.sequence_mean(x_nan, jnp.asarray(mask, jnp.float32)), want)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kind": "kl"}, "unknown divergence kind"),
        ({"kind": "rkl", "topk_mode": "sparse"}, "unknown topk_mode"),
        ({"kind": "rkl", "top_k": 0}, "top_k"),
        ({"kind": "jsd", "beta": 1.5}, "beta"),
        ({"kind": "rkl", "chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    s = jnp.zeros((1, 2, 3))
    with pytest.raises(ValueError, match=match):
        dv.token_divergence(s, s, **kwargs)


def test_vocab_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match="V=5.*V=6"):
        dv.token_divergence(jnp.zeros((1, 2, 5)), jnp.zeros((1, 2, 6)), kind="rkl")


def test_registry_names():
    assert set(dv.DIVERGENCES) == set(KINDS)
