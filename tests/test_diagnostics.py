"""Token-level diagnostics (methods.md section 9) vs a float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dopd_jax.losses import diagnostics

B, T, V = 3, 5, 12


def np_softmax(x):
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_token_stats(s_logits, t_logits, tokens, mask, top_k):
    s, t = np_softmax(s_logits), np_softmax(t_logits)
    k = min(top_k, s.shape[-1])
    per_token = {
        name: np.zeros(mask.shape)
        for name in (
            "student_entropy",
            "target_entropy",
            "kl_sampled",
            "student_topk_mass",
            "target_topk_mass",
            "student_mass_on_target_topk",
            "topk_overlap",
        )
    }
    for b, n in np.ndindex(*mask.shape):
        sp, tp, y = s[b, n], t[b, n], tokens[b, n]
        s_top = set(np.argsort(-sp, kind="stable")[:k])
        t_top = set(np.argsort(-tp, kind="stable")[:k])
        per_token["student_entropy"][b, n] = -(sp * np.log(sp)).sum()
        per_token["target_entropy"][b, n] = -(tp * np.log(tp)).sum()
        per_token["kl_sampled"][b, n] = np.log(sp[y]) - np.log(tp[y])
        per_token["student_topk_mass"][b, n] = sp[list(s_top)].sum()
        per_token["target_topk_mass"][b, n] = tp[list(t_top)].sum()
        per_token["student_mass_on_target_topk"][b, n] = sp[list(t_top)].sum()
        per_token["topk_overlap"][b, n] = len(s_top & t_top) / k
    return {name: x[mask].mean() for name, x in per_token.items()}


def _inputs(seed):
    rng = np.random.default_rng(seed)
    s = 2.0 * rng.normal(size=(B, T, V)).astype(np.float32)
    t = (0.7 * s + 1.5 * rng.normal(size=(B, T, V))).astype(np.float32)  # partial overlap
    tokens = rng.integers(0, V, (B, T))
    mask = rng.random((B, T)) < 0.7
    mask[0, 0] = True
    return s, t, tokens, mask


@pytest.mark.parametrize("top_k,chunk_size", [(4, None), (4, 2), (V + 5, None)])
def test_token_stats_match_numpy(top_k, chunk_size):
    s, t, tokens, mask = _inputs(0)
    got = diagnostics.token_stats(
        jnp.asarray(s),
        jnp.asarray(t),
        jnp.asarray(tokens),
        jnp.asarray(mask),
        top_k=top_k,
        chunk_size=chunk_size,
        prefix="d/",
    )
    want = np_token_stats(s, t, tokens, mask, top_k)
    assert set(got) == {"d/" + name for name in want}
    for name, value in want.items():
        assert got["d/" + name].dtype == jnp.float32 and got["d/" + name].shape == ()
        np.testing.assert_allclose(got["d/" + name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    if top_k < V:  # the case exercises a partial overlap, not a trivial 0 or 1
        assert 0.0 < want["topk_overlap"] < 1.0


def test_token_stats_are_stop_gradient_and_jittable():
    s, t, tokens, mask = (jnp.asarray(a) for a in _inputs(1))
    fn = lambda a, b: sum(diagnostics.token_stats(a, b, tokens, mask, top_k=3).values())
    g_s, g_t = jax.grad(fn, argnums=(0, 1))(s, t)
    assert np.all(np.asarray(g_s) == 0.0) and np.all(np.asarray(g_t) == 0.0)
    eager = diagnostics.token_stats(s, t, tokens, mask, top_k=3)
    jitted = jax.jit(lambda a, b: diagnostics.token_stats(a, b, tokens, mask, top_k=3))(s, t)
    for name in eager:
        np.testing.assert_allclose(jitted[name], eager[name], rtol=1e-6, err_msg=name)


def test_identical_distributions_and_bad_arguments():
    s, _, tokens, mask = (jnp.asarray(a) for a in _inputs(2))
    stats = diagnostics.token_stats(s, s, tokens, mask, top_k=4)
    np.testing.assert_allclose(stats["topk_overlap"], 1.0)
    np.testing.assert_allclose(stats["kl_sampled"], 0.0, atol=1e-6)
    np.testing.assert_allclose(stats["student_mass_on_target_topk"], stats["student_topk_mass"])
    with pytest.raises(ValueError, match="top_k"):
        diagnostics.token_stats(s, s, tokens, mask, top_k=0)
    with pytest.raises(ValueError, match="V=12.*V=13"):
        diagnostics.token_stats(s, jnp.zeros((B, T, V + 1)), tokens, mask)
