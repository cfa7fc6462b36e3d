"""DOPD, OPD (pg) and divergence losses vs independent float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dopd_jax import losses
from dopd_jax.losses import divergences

B, T, V, K = 4, 6, 10, 4


# ---- NumPy references (float64, over probabilities) ----


def np_softmax(x):
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_logp_at(x, tokens):
    return np.log(np.take_along_axis(np_softmax(x), tokens[..., None], -1)[..., 0])


def np_divergence(s_logits, t_logits, kind, top_k=None, mode="renormalize"):
    s, t = np_softmax(s_logits), np_softmax(t_logits)
    restricted = top_k is not None and top_k < s.shape[-1]
    if restricted:
        idx = np.argsort(-t, axis=-1, kind="stable")[..., :top_k]
        s, t = np.take_along_axis(s, idx, -1), np.take_along_axis(t, idx, -1)
        if mode == "renormalize":
            s, t = s / s.sum(-1, keepdims=True), t / t.sum(-1, keepdims=True)
    if kind == "rkl":
        extra = (t - s) if restricted and mode == "generalized" else 0.0
        return (s * np.log(s / t) + extra).sum(-1)
    assert kind == "jsd" and not restricted
    m = 0.5 * (s + t)
    return 0.5 * (t * np.log(t / m)).sum(-1) + 0.5 * (s * np.log(s / m)).sum(-1)


def np_trimmed_mean(x, mask, fraction=0.05):
    vals = x[mask > 0]
    if vals.size == 0:
        return 0.0
    return vals[vals <= np.percentile(vals, 100 * (1 - fraction))].mean()


def np_sequence_mean(x, mask):
    rows = [x[b][mask[b] > 0].mean() for b in range(x.shape[0]) if mask[b].any()]
    return np.mean(rows) if rows else 0.0


def np_dopd(
    s, ps, t, tokens, mask, *, top_k, mode, hs_target, gap_threshold, beta_light=0.6, beta_weak=0.3
):
    logqS, logqT = np_logp_at(ps, tokens), np_logp_at(t, tokens)
    gap, qS, qT = np.abs(logqT - logqS), np.exp(logqS), np.exp(logqT)
    a_bar = np_trimmed_mean(gap, mask) if gap_threshold is None else gap_threshold
    ref = np_trimmed_mean(qS, mask) + np_trimmed_mean(qT, mask)
    small, valid = gap < a_bar, mask > 0
    regimes = {
        "LH": valid & small & (qS + qT >= ref),
        "LL": valid & small & (qS + qT < ref),
        "HT": valid & ~small & (qT >= qS),
        "HS": valid & ~small & (qT < qS),
    }
    hs = ps if hs_target == "priv_student" else t
    per_regime = {
        "LH": beta_light * np_divergence(s, t, "rkl", top_k, mode),
        "LL": beta_weak * np_divergence(s, ps, "rkl", top_k, mode),
        "HT": np_divergence(s, t, "jsd"),
        "HS": beta_light * np_divergence(s, hs, "rkl", top_k, mode),
    }
    per_token = sum(regimes[r] * per_regime[r] for r in regimes)
    return np_sequence_mean(per_token, mask), regimes, per_regime, gap


# ---- inputs ----


def _random_inputs(seed):
    rng = np.random.default_rng(seed)
    s, ps, t = (2.0 * rng.normal(size=(B, T, V)).astype(np.float32) for _ in range(3))
    tokens = rng.integers(0, V, (B, T))
    mask = rng.random((B, T)) < 0.8
    mask[0] = True
    mask[-1] = False  # an empty sequence is skipped by the sequence mean
    return s, ps, t, tokens, mask


def _logits_with_prob(q, rng):
    """Logits over V whose probability of token 0 is q; the rest is random."""
    rest = rng.dirichlet(np.ones(V - 1)) * (1 - q)
    return np.log(np.concatenate([[q], rest])).astype(np.float32)


def _hand_built():
    """One sequence of four tokens routed LH, LL, HT, HS (gap_threshold=0.5)."""
    rng = np.random.default_rng(0)
    qs_qt = [(0.8, 0.85), (0.1, 0.11), (0.1, 0.8), (0.8, 0.1)]
    ps = np.stack([_logits_with_prob(a, rng) for a, _ in qs_qt])[None]
    t = np.stack([_logits_with_prob(b, rng) for _, b in qs_qt])[None]
    s = rng.normal(size=(1, 4, V)).astype(np.float32)
    return s, ps, t, np.zeros((1, 4), np.int32), np.ones((1, 4), bool)


_dopd = jax.jit(
    losses.dopd_loss,
    static_argnames=("top_k", "topk_mode", "hs_target", "gap_threshold", "chunk_size"),
)


def _dopd_grads(s, ps, t, tokens, mask, **kw):
    fn = lambda a, b, c: _dopd(a, b, c, tokens, mask, **kw)[0]
    return jax.jit(jax.grad(fn, argnums=(0, 1, 2)))(s, ps, t)


# ---- dopd_loss ----


@pytest.mark.parametrize(
    "mode,hs_target,gap_threshold,chunk",
    [
        ("renormalize", "priv_student", None, None),
        ("generalized", "priv_student", 0.8, 4),
        ("renormalize", "teacher", None, 4),
    ],
)
def test_dopd_matches_numpy(mode, hs_target, gap_threshold, chunk):
    s, ps, t, tokens, mask = _random_inputs(1)
    loss, metrics = _dopd(
        s,
        ps,
        t,
        tokens,
        mask,
        top_k=K,
        topk_mode=mode,
        hs_target=hs_target,
        gap_threshold=gap_threshold,
        chunk_size=chunk,
    )
    want, regimes, per_regime, gap = np_dopd(
        s, ps, t, tokens, mask, top_k=K, mode=mode, hs_target=hs_target, gap_threshold=gap_threshold
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    for r, in_r in regimes.items():
        np.testing.assert_allclose(metrics[f"frac_{r}"], in_r.sum() / mask.sum(), rtol=1e-6)
        if in_r.any():
            np.testing.assert_allclose(metrics[f"loss_{r}"], per_regime[r][in_r].mean(), rtol=1e-5)
            np.testing.assert_allclose(metrics[f"gap_{r}"], gap[in_r].mean(), rtol=1e-5)
        else:
            assert float(metrics[f"loss_{r}"]) == 0.0
    np.testing.assert_allclose(metrics["gap_mean"], gap[mask].mean(), rtol=1e-5)
    logS = np_logp_at(s, tokens)
    np.testing.assert_allclose(
        metrics["kl_priv_teacher"], (logS - np_logp_at(t, tokens))[mask].mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        metrics["kl_priv_student"], (logS - np_logp_at(ps, tokens))[mask].mean(), rtol=1e-5
    )


def test_dopd_fixed_threshold_differs_from_batch_mean():
    s, ps, t, tokens, mask = _random_inputs(2)
    _, m_mean = _dopd(s, ps, t, tokens, mask, top_k=K)
    _, m_fixed = _dopd(s, ps, t, tokens, mask, top_k=K, gap_threshold=100.0)
    assert float(m_fixed["A_bar"]) == 100.0
    assert float(m_fixed["frac_HT"] + m_fixed["frac_HS"]) == 0.0  # every gap is small
    assert float(m_mean["frac_HT"] + m_mean["frac_HS"]) > 0.0


def test_every_regime_gets_a_student_gradient_and_targets_none():
    s, ps, t, tokens, mask = _hand_built()
    _, metrics = _dopd(s, ps, t, tokens, mask, top_k=K, gap_threshold=0.5)
    for r in ("LH", "LL", "HT", "HS"):
        assert float(metrics[f"frac_{r}"]) == 0.25, r
    g_s, g_ps, g_t = _dopd_grads(s, ps, t, tokens, mask, top_k=K, gap_threshold=0.5)
    # Positions 0..3 are LH, LL, HT, HS: each row of the student gradient is non-zero.
    assert np.all(np.abs(np.asarray(g_s)[0]).max(-1) > 1e-3)
    assert np.all(np.asarray(g_ps) == 0.0) and np.all(np.asarray(g_t) == 0.0)


def _rkl_topk_grad(s_row, target_row, weight, top_k=K):
    """Gradient of weight * top-K RKL for one position, via the reference divergence."""
    fn = (
        lambda x: weight
        * divergences.token_divergence(
            x[None, None], target_row[None, None], kind="rkl", top_k=top_k
        )[0, 0]
    )
    return np.asarray(jax.grad(fn)(jnp.asarray(s_row)))


@pytest.mark.parametrize("hs_target", ["priv_student", "teacher"])
def test_regime_gradients_follow_the_table(hs_target):
    s, ps, t, tokens, mask = _hand_built()
    g_s = (
        np.asarray(
            _dopd_grads(s, ps, t, tokens, mask, top_k=K, gap_threshold=0.5, hs_target=hs_target)[0]
        )[0]
        * 4
    )  # undo the 1/4 token mean
    np.testing.assert_allclose(g_s[0], _rkl_topk_grad(s[0, 0], t[0, 0], 0.6), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g_s[1], _rkl_topk_grad(s[0, 1], ps[0, 1], 0.3), rtol=1e-4, atol=1e-7)
    hs_row = (ps if hs_target == "priv_student" else t)[0, 3]
    np.testing.assert_allclose(g_s[3], _rkl_topk_grad(s[0, 3], hs_row, 0.6), rtol=1e-4, atol=1e-7)
    other_row = (t if hs_target == "priv_student" else ps)[0, 3]
    assert np.abs(g_s[3] - _rkl_topk_grad(s[0, 3], other_row, 0.6)).max() > 1e-3


def test_gap_comes_from_the_privileged_student():
    s, ps, t, tokens, mask = _hand_built()
    # The plain student equals the teacher: a gap computed from it would be 0
    # everywhere (all light/weak); the privileged student routes HT and HS.
    _, metrics = _dopd(t, ps, t, tokens, mask, top_k=K, gap_threshold=0.5)
    assert float(metrics["frac_HT"]) == 0.25 and float(metrics["frac_HS"]) == 0.25
    # Routing and its statistics do not depend on the plain student at all.
    _, other = _dopd(s, ps, t, tokens, mask, top_k=K, gap_threshold=0.5)
    for key in (
        "frac_LH",
        "frac_LL",
        "frac_HT",
        "frac_HS",
        "A_bar",
        "qS_bar",
        "qT_bar",
        "gap_mean",
    ):
        assert float(metrics[key]) == float(other[key]), key


def test_dopd_top_k_clamps_and_jit_parity():
    s, ps, t, tokens, mask = _random_inputs(3)
    eager, m_eager = losses.dopd_loss(s, ps, t, tokens, mask, top_k=V + 3)
    jitted, _ = _dopd(s, ps, t, tokens, mask, top_k=V + 3)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5)
    want, *_ = np_dopd(
        s,
        ps,
        t,
        tokens,
        mask,
        top_k=None,
        mode="renormalize",
        hs_target="priv_student",
        gap_threshold=None,
    )
    np.testing.assert_allclose(eager, want, rtol=1e-5)
    assert set(m_eager) >= {"frac_LH", "frac_LL", "frac_HT", "frac_HS", "A_bar"}


@pytest.mark.parametrize(
    "kwargs,shapes,match",
    [
        ({"top_k": 0}, None, "top_k"),
        ({"hs_target": "student"}, None, "hs_target"),
        ({"topk_mode": "sparse"}, None, "topk_mode"),
        ({}, {"t": (B, T, V + 2)}, f"V={V}.*V={V + 2}"),
        ({}, {"ps": (B, T + 1, V)}, "shape"),
        ({}, {"tokens": (B, T + 1)}, "tokens"),
    ],
)
def test_dopd_argument_validation(kwargs, shapes, match):
    arrays = {"s": (B, T, V), "ps": (B, T, V), "t": (B, T, V), "tokens": (B, T)}
    arrays.update(shapes or {})
    a = {k: jnp.zeros(v, jnp.int32 if k == "tokens" else jnp.float32) for k, v in arrays.items()}
    with pytest.raises(ValueError, match=match):
        losses.dopd_loss(
            a["s"], a["ps"], a["t"], a["tokens"], jnp.ones(a["tokens"].shape, bool), **kwargs
        )


# ---- opd_pg_loss ----


def test_opd_pg_matches_numpy_and_gradient_is_minus_a_dlogs():
    s, _, t, tokens, mask = _random_inputs(4)
    loss, metrics = losses.opd_pg_loss(s, t, tokens, mask)
    logS, logT = np_logp_at(s, tokens), np_logp_at(t, tokens)
    adv = logT - logS
    np.testing.assert_allclose(loss, np_sequence_mean(-adv * logS, mask), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl_teacher"], (logS - logT)[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["adv_mean"], adv[mask].mean(), rtol=1e-5)
    g = np.asarray(jax.grad(lambda x: losses.opd_pg_loss(x, t, tokens, mask)[0])(s))
    # d log S(y)/d logits = onehot(y) - softmax; A is a constant (stop-gradient).
    n_rows = mask.any(1).sum()
    scale = np.where(mask, -adv / np.maximum(mask.sum(1, keepdims=True), 1) / n_rows, 0.0)
    want = scale[..., None] * (np.eye(V)[tokens] - np_softmax(s))
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)
    g_t = jax.grad(lambda x: losses.opd_pg_loss(s, x, tokens, mask)[0])(t)
    assert np.all(np.asarray(g_t) == 0.0)


def test_opd_pg_adv_clip_and_outcome_adv():
    s, _, t, tokens, mask = _random_inputs(5)
    t = 4.0 * t  # make some advantages exceed the clip
    logS, logT = np_logp_at(s, tokens), np_logp_at(t, tokens)
    outcome = np.linspace(-1, 1, B).astype(np.float32)
    adv = np.clip(logT - logS, -1.5, 1.5) + outcome[:, None]
    assert np.abs(logT - logS)[mask].max() > 1.5
    loss, metrics = losses.opd_pg_loss(s, t, tokens, mask, adv_clip=1.5, outcome_adv=outcome)
    np.testing.assert_allclose(loss, np_sequence_mean(-adv * logS, mask), rtol=1e-5)
    np.testing.assert_allclose(metrics["adv_mean"], adv[mask].mean(), rtol=1e-5, atol=1e-7)


def test_opd_pg_truncated_importance_weight():
    s, _, t, tokens, mask = _random_inputs(6)
    logS, logT = np_logp_at(s, tokens), np_logp_at(t, tokens)
    ratio = np.random.default_rng(0).choice([0.5, 0.9, 1.1, 2.0], size=(B, T))
    sampler_logp = (logS - np.log(ratio)).astype(np.float32)
    kept = (ratio >= 0.8) & (ratio <= 1.2)
    fn = lambda x: losses.opd_pg_loss(
        x, t, tokens, mask, sampler_logp=sampler_logp, is_clip=(0.8, 1.2)
    )
    (loss, metrics), g = jax.value_and_grad(fn, has_aux=True)(s)
    w = np.where(kept, ratio, 0.0)
    np.testing.assert_allclose(loss, np_sequence_mean(-w * (logT - logS) * logS, mask), rtol=1e-4)
    np.testing.assert_allclose(metrics["is_zeroed_frac"], (~kept)[mask].mean(), rtol=1e-6)
    assert np.all(np.asarray(g)[~kept] == 0.0)  # truncated tokens carry no gradient
    assert np.abs(np.asarray(g)[kept & mask]).max() > 1e-4
    with pytest.raises(ValueError, match="sampler_logp"):
        losses.opd_pg_loss(s, t, tokens, mask, is_clip=(0.8, 1.2))


# ---- divergence_loss ----


@pytest.mark.parametrize("kind,top_k", [("rkl", K), ("jsd", None)])
def test_divergence_loss_matches_numpy(kind, top_k):
    s, _, t, tokens, mask = _random_inputs(7)
    fn = lambda a, b: losses.divergence_loss(
        a, b, tokens, mask, kind=kind, top_k=top_k, chunk_size=4
    )
    (loss, metrics) = fn(s, t)
    div = np_divergence(s, t, kind, top_k)
    np.testing.assert_allclose(loss, np_sequence_mean(div, mask), rtol=1e-5)
    np.testing.assert_allclose(metrics["div_mean"], div[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(
        metrics["kl_target"],
        (np_logp_at(s, tokens) - np_logp_at(t, tokens))[mask].mean(),
        rtol=1e-5,
    )
    g_t = jax.grad(lambda b: fn(s, b)[0])(t)
    assert np.all(np.asarray(g_t) == 0.0)


def test_losses_registry():
    assert losses.LOSSES == {
        "dopd": losses.dopd_loss,
        "opd_pg": losses.opd_pg_loss,
        "divergence": losses.divergence_loss,
    }
