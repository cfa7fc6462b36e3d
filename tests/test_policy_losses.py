"""Sampled-token divergence estimates, GRPO and the group advantage vs the spec.

References are written from methods.md (sections 2 and 8), not from the code:
the estimators are checked for unbiasedness by enumerating every token of a
small vocabulary, and GRPO against a float64 NumPy formula and its gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dopd_jax import losses
from dopd_jax.steps import outcome

V = 5


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _exact_grad(kind, s_logits, t_logits):
    """d KL / d student logits at one position, by autodiff of the exact KL."""
    t = jax.nn.log_softmax(jnp.asarray(t_logits))

    def kl(x):
        s = jax.nn.log_softmax(x)
        if kind == "rkl":
            return jnp.sum(jnp.exp(s) * (s - t))
        return jnp.sum(jnp.exp(t) * (t - s))

    return np.asarray(jax.grad(kl)(jnp.asarray(s_logits)))


def _estimate_grad(kind, s_logits, t_logits, token, on_policy):
    """Gradient of the sampled loss at a single token (one row, one position)."""

    def loss(x):
        value, _ = losses.sampled_divergence_loss(
            x[None, None],
            jnp.asarray(t_logits)[None, None],
            jnp.array([[token]]),
            jnp.ones((1, 1), bool),
            kind=kind,
            on_policy=jnp.array([on_policy]),
        )
        return value

    return jax.value_and_grad(loss)(jnp.asarray(s_logits))


@pytest.mark.parametrize("kind", ["rkl", "fkl"])
@pytest.mark.parametrize("on_policy", [True, False])
def test_sampled_estimates_are_unbiased_in_value_and_gradient(kind, on_policy):
    rng = np.random.default_rng(0)
    s_logits, t_logits = rng.normal(size=V), rng.normal(size=V)
    s, t = _softmax(s_logits), _softmax(t_logits)
    sampling = s if on_policy else t  # where y comes from
    value = grad = 0.0
    for y in range(V):
        v, g = _estimate_grad(kind, s_logits, t_logits, y, on_policy)
        value, grad = value + sampling[y] * float(v), grad + sampling[y] * np.asarray(g)
    exact = (s * np.log(s / t)).sum() if kind == "rkl" else (t * np.log(t / s)).sum()
    np.testing.assert_allclose(value, exact, rtol=1e-10)
    np.testing.assert_allclose(grad, _exact_grad(kind, s_logits, t_logits), atol=1e-10)


def test_off_policy_forward_kl_is_sft_on_the_sample():
    rng = np.random.default_rng(1)
    s_logits, t_logits = rng.normal(size=V), rng.normal(size=V)
    _, g = _estimate_grad("fkl", s_logits, t_logits, 3, on_policy=False)
    nll = jax.grad(lambda x: -jax.nn.log_softmax(x)[3])(jnp.asarray(s_logits))
    np.testing.assert_allclose(g, nll, atol=1e-12)


def test_sampled_divergence_refuses_jsd_and_target_gets_no_gradient():
    x = jnp.zeros((1, 2, V))
    with pytest.raises(ValueError, match=r"one of \('fkl', 'rkl'\)"):
        losses.sampled_divergence_loss(x, x, jnp.zeros((1, 2), int), jnp.ones((1, 2)), kind="jsd")
    g = jax.grad(
        lambda t: losses.sampled_divergence_loss(
            x + 0.1, t, jnp.zeros((1, 2), int), jnp.ones((1, 2)), kind="rkl"
        )[0]
    )(x)
    assert not np.any(np.asarray(g))


def test_group_advantage_matches_formula():
    r = np.array([1, 0, 0, 1, 1, 1, 0, 1], np.float32)
    adv = outcome.group_advantage(r, 4, eps=1e-6)
    for g in range(2):
        x = r[4 * g : 4 * g + 4].astype(np.float64)
        np.testing.assert_allclose(adv[4 * g : 4 * g + 4], (x - x.mean()) / (x.std() + 1e-6), 1e-5)
    assert not np.any(outcome.group_advantage(np.ones(4), 2))  # equal rewards: no signal
    with pytest.raises(ValueError, match="groups of 3"):
        outcome.group_advantage(np.ones(4), 3)


def _np_grpo(logits, tokens, mask, adv, sampler_logp, ref_logits, eps, eps_hi, beta):
    logp = np.log(np.take_along_axis(_softmax(logits), tokens[..., None], -1)[..., 0])
    ratio = np.exp(logp - sampler_logp)
    a = adv[:, None]
    per = -np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps_hi) * a)
    logr = np.log(np.take_along_axis(_softmax(ref_logits), tokens[..., None], -1)[..., 0])
    per = per + beta * (np.exp(logr - logp) - (logr - logp) - 1)
    rows = [per[b][mask[b]].mean() for b in range(len(per)) if mask[b].any()]
    return np.mean(rows)


def test_grpo_loss_matches_numpy_and_clipped_tokens_get_no_gradient():
    rng = np.random.default_rng(2)
    b, t = 4, 6
    logits, ref = rng.normal(size=(b, t, V)), rng.normal(size=(b, t, V))
    tokens = rng.integers(0, V, (b, t))
    mask = rng.random((b, t)) < 0.8
    mask[:, 0] = True
    adv = np.array([1.5, -0.5, 0.0, -1.0])
    # ratios far from 1 on some tokens, so both sides of the clip are exercised
    logp = np.log(np.take_along_axis(_softmax(logits), tokens[..., None], -1)[..., 0])
    sampler = logp + rng.normal(scale=0.5, size=(b, t))
    args = (jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(adv), jnp.asarray(sampler))
    kw = dict(clip_eps=0.2, clip_eps_high=0.3, ref_logits=jnp.asarray(ref), kl_coef=0.1)
    loss, metrics = losses.grpo_loss(jnp.asarray(logits), *args, **kw)
    want = _np_grpo(logits, tokens, mask, adv, sampler, ref, 0.2, 0.3, 0.1)
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)  # float32 inside
    assert 0 < float(metrics["clip_frac"]) < 1
    # Without the KL term, a token whose ratio is clipped on the advantage's side is
    # constant in the objective: its logits get exactly zero gradient.
    kw0 = dict(clip_eps=0.2, clip_eps_high=0.3)
    g = np.asarray(jax.grad(lambda x: losses.grpo_loss(x, *args, **kw0)[0])(jnp.asarray(logits)))
    ratio = np.exp(logp - sampler)
    a = adv[:, None]
    flat = ((ratio > 1.3) & (a > 0)) | ((ratio < 0.8) & (a < 0)) | (a == 0) | ~mask
    assert flat.any() and (~flat).any()
    assert not np.any(g[flat])
    assert np.all(np.abs(g[~flat]).sum(-1) > 0)
