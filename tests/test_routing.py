"""Trimmed batch means and DOPD regime routing vs NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dopd_jax.losses import routing


def np_trimmed_mean(x, mask, outlier_fraction):
    vals = np.asarray(x, np.float64)[np.asarray(mask) > 0]
    if vals.size == 0:
        return 0.0
    threshold = np.percentile(vals, 100.0 * (1.0 - outlier_fraction))
    return vals[vals <= threshold].mean()


def _stats(seed, shape=(4, 9)):
    rng = np.random.default_rng(seed)
    qS = rng.uniform(0.01, 1.0, shape).astype(np.float32)
    qT = rng.uniform(0.01, 1.0, shape).astype(np.float32)
    gap = np.abs(np.log(qT) - np.log(qS)).astype(np.float32)
    mask = rng.random(shape) < 0.75
    mask[-1] = False
    return gap, qS, qT, mask


@pytest.mark.parametrize("outlier_fraction", [0.0, 0.05, 0.2, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_trimmed_mean_matches_numpy(outlier_fraction, seed):
    rng = np.random.default_rng(seed)
    x = rng.exponential(size=(5, 13)).astype(np.float32)
    mask = rng.random((5, 13)) < 0.6
    got = routing.trimmed_mean(jnp.asarray(x), jnp.asarray(mask), outlier_fraction)
    np.testing.assert_allclose(got, np_trimmed_mean(x, mask, outlier_fraction), rtol=1e-6)


@pytest.mark.parametrize("outlier_fraction", [0.05, 0.3])
def test_trimmed_mean_with_ties_and_float_mask(outlier_fraction):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(6, 7)).astype(np.float32)  # many ties
    mask = (rng.random((6, 7)) < 0.8).astype(np.float32)
    got = routing.trimmed_mean(jnp.asarray(x), jnp.asarray(mask), outlier_fraction)
    np.testing.assert_allclose(got, np_trimmed_mean(x, mask, outlier_fraction), rtol=1e-6)
    # An integer percentile position (n - 1 = 20, q = 0.95 -> index 19 exactly).
    x21, m21 = np.arange(21, dtype=np.float32)[None], np.ones((1, 21), bool)
    np.testing.assert_allclose(
        routing.trimmed_mean(jnp.asarray(x21), jnp.asarray(m21)),
        np_trimmed_mean(x21, m21, 0.05),
        rtol=1e-6,
    )


def test_trimmed_mean_edge_cases():
    x = jnp.asarray([[1.0, 2.0, 50.0]])
    empty = jnp.zeros((1, 3), bool)
    got = routing.trimmed_mean(x, empty)
    assert float(got) == 0.0 and np.isfinite(float(got))
    one = jnp.asarray([[False, True, False]])
    assert float(routing.trimmed_mean(x, one)) == 2.0
    # Masked-out values (even inf) never enter the quantile or the mean.
    x_inf = jnp.asarray([[1.0, 3.0, jnp.inf]])
    assert float(routing.trimmed_mean(x_inf, jnp.asarray([[True, True, False]]), 0.0)) == 2.0
    g = jax.grad(lambda v: routing.trimmed_mean(v, jnp.ones((1, 3), bool)))(x)
    assert np.all(np.asarray(g) == 0.0)  # stop-gradient
    with pytest.raises(ValueError, match="outlier_fraction"):
        routing.trimmed_mean(x, one, 1.0)


def np_regimes(gap, qS, qT, mask, a_bar, qS_bar, qT_bar):
    small, valid = gap < a_bar, mask > 0
    confident = qS + qT >= qS_bar + qT_bar
    return {
        "LH": valid & small & confident,
        "LL": valid & small & ~confident,
        "HT": valid & ~small & (qT >= qS),
        "HS": valid & ~small & (qT < qS),
    }


@pytest.mark.parametrize("gap_threshold", [None, 0.7])
def test_regimes_match_numpy_and_partition(gap_threshold):
    gap, qS, qT, mask = _stats(4)
    regimes, refs = routing.dopd_regimes(
        jnp.asarray(gap),
        jnp.asarray(qS),
        jnp.asarray(qT),
        jnp.asarray(mask),
        gap_threshold=gap_threshold,
    )
    want_refs = {
        "A_bar": np_trimmed_mean(gap, mask, 0.05) if gap_threshold is None else gap_threshold,
        "qS_bar": np_trimmed_mean(qS, mask, 0.05),
        "qT_bar": np_trimmed_mean(qT, mask, 0.05),
    }
    for name, value in want_refs.items():
        np.testing.assert_allclose(refs[name], value, rtol=1e-6)
    want = np_regimes(gap, qS, qT, mask, *(np.float32(refs[k]) for k in want_refs))
    total = np.zeros(mask.shape)
    for name in routing.REGIMES:
        got = np.asarray(regimes[name])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want[name])
        total += got
    np.testing.assert_array_equal(total, mask.astype(np.float64))  # exact partition
    assert all(want[name].any() for name in routing.REGIMES)  # the case covers all four


def test_partition_survives_nan_statistics():
    gap, qS, qT, mask = _stats(5)
    gap[0, :3] = np.nan
    qS[1, :2] = np.nan
    regimes, _ = routing.dopd_regimes(
        jnp.asarray(gap), jnp.asarray(qS), jnp.asarray(qT), jnp.asarray(mask), gap_threshold=0.5
    )
    total = sum(np.asarray(r) for r in regimes.values())
    np.testing.assert_array_equal(total, mask.astype(np.float32))


def _worked_example():
    """Tokens A, B of methods.md section 4 plus 8 fillers with gap 0.5."""
    qT = np.array([[0.9, 0.9] + [0.5 * np.exp(0.5)] * 8], np.float32)
    qS = np.array([[0.85, 0.3] + [0.5] * 8], np.float32)
    gap = np.abs(np.log(qT) - np.log(qS))
    return gap, qS, qT, np.ones_like(gap, bool)


@pytest.mark.parametrize("gap_threshold", [None, 0.5])
def test_worked_example(gap_threshold):
    gap, qS, qT, mask = _worked_example()
    np.testing.assert_allclose(gap[0, :2], [0.057, 1.0986], atol=1e-3)
    regimes, refs = routing.dopd_regimes(
        jnp.asarray(gap),
        jnp.asarray(qS),
        jnp.asarray(qT),
        jnp.asarray(mask),
        gap_threshold=gap_threshold,
    )
    assert 0.057 < float(refs["A_bar"]) < 1.0986
    assert float(regimes["LH"][0, 0]) == 1.0  # A: small gap, confident: light
    assert float(regimes["HT"][0, 1]) == 1.0  # B: large gap, teacher ahead: strong JS


def test_regimes_jit_parity_and_table():
    gap, qS, qT, mask = (jnp.asarray(a) for a in _stats(6))
    eager = routing.dopd_regimes(gap, qS, qT, mask)
    jitted = jax.jit(routing.dopd_regimes)(gap, qS, qT, mask)
    jax.tree.map(np.testing.assert_array_equal, eager[0], jitted[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager[1], jitted[1])
    assert routing.ROUTING_RULES["dopd"] is routing.dopd_regimes
    table = {
        k: (s.target, s.kind, s.top_k, s.default_weight)
        for k, s in routing.DOPD_REGIME_SPECS.items()
    }
    assert table == {
        "LH": ("teacher", "rkl", True, 0.6),
        "LL": ("priv_student", "rkl", True, 0.3),
        "HT": ("teacher", "jsd", False, 1.0),
        "HS": ("priv_student", "rkl", True, 0.6),
    }


def test_privilege_stats_use_sampled_tokens():
    rng = np.random.default_rng(7)
    s, t = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    tokens = rng.integers(0, 5, (2, 3))
    stats = routing.privilege_stats(jnp.asarray(s), jnp.asarray(t), jnp.asarray(tokens))
    pick = lambda x: np.take_along_axis(
        np.exp(x) / np.exp(x).sum(-1, keepdims=True), tokens[..., None], -1
    )[..., 0]
    np.testing.assert_allclose(stats["qS"], pick(s), rtol=1e-5)
    np.testing.assert_allclose(stats["qT"], pick(t), rtol=1e-5)
    np.testing.assert_allclose(
        stats["gap"], np.abs(np.log(pick(t) / pick(s))), rtol=1e-4, atol=1e-6
    )


def test_bad_arguments_raise_and_batch_mean_alias():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="same"):
        routing.dopd_regimes(x, x, jnp.zeros((2, 4)), x > 0)
    with pytest.raises(ValueError, match="gap_threshold"):
        routing.dopd_regimes(x, x, x, x > 0, gap_threshold="median")
    gap, qS, qT, mask = (jnp.asarray(a) for a in _stats(8))
    by_name = routing.dopd_regimes(gap, qS, qT, mask, gap_threshold="batch_mean")
    by_none = routing.dopd_regimes(gap, qS, qT, mask)
    jax.tree.map(np.testing.assert_array_equal, by_name, by_none)
