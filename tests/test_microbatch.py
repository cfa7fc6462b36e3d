"""Micro-batched score + update equals the full-batch step; ``refs`` in routing and dopd_loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dopd_jax import losses, sharding, steps
from dopd_jax.losses import routing
from dopd_jax.methods import get_method
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.steps import microbatch
from dopd_jax.steps import rollout as rollout_lib

V = 24
EOS, PAD = 1, 0
N_SAMPLES = 2


def _model(seed, d=16):
    cfg = ModelConfig(
        vocab_size=V, d_model=d, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=d // 2, d_ff=2 * d
    )
    return nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))


def _batch(rng, b=4, p=6, q=10):
    prompt, mask = np.zeros((b, p), np.int32), np.zeros((b, p), bool)
    priv, pmask = np.zeros((b, q), np.int32), np.zeros((b, q), bool)
    for i, n in enumerate(rng.integers(2, p + 1, size=b)):
        ids = rng.integers(4, V, size=n)
        full = np.concatenate([ids, rng.integers(4, V, size=q - p)])
        prompt[i, p - n :], mask[i, p - n :] = ids, True
        priv[i, q - len(full) :], pmask[i, q - len(full) :] = full, True
    return steps.DistillBatch(*map(jnp.asarray, (prompt, mask, priv, pmask)))


def _spec(method, chunk_size=None, **kw):
    sampler = rollout_lib.SamplerConfig(
        max_new_tokens=8, eos_id=EOS, pad_id=PAD, n_samples=N_SAMPLES
    )
    m = get_method(method)
    if method == "dopd":
        kw.setdefault("top_k", 8)
    return steps.DistillSpec(m, m.make_config(kw), sampler, chunk_size=chunk_size, diag_top_k=8)


def _g(gs, gt=None):
    return {"student": gs} if gt is None else {"student": gs, "teacher": gt}


def _t(pt):
    return {"teacher": pt}


@pytest.fixture(scope="module")
def setup():
    gs, ps = _model(0)
    gt, pt = _model(1, d=24)
    return gs, ps, gt, pt, _batch(np.random.default_rng(0))


def _rollout(gs, ps, spec, batch, empty_row=True):
    state = steps.init_state(ps, optax.sgd(1.0), keep_ref=False)
    ro = jax.jit(lambda s, b: steps.rollout_step(_g(gs), spec, s, {}, b, jax.random.key(0)))(
        state, batch
    )
    if empty_row:  # a sequence without valid tokens must not count in the mean
        ro = dataclasses.replace(ro, mask_BT=ro.mask_BT.at[3].set(False))
    return ro


def _copy_state(ps, opt):
    return steps.init_state(jax.tree.map(jnp.copy, ps), opt, keep_ref=False)


def _check_refs_differ_per_microbatch(targets, ro, num_microbatches):
    """The first micro-batch's own trimmed means differ from the whole batch's."""
    stats = routing.privilege_stats(targets["priv_student"], targets["priv_teacher"], ro.tokens_BT)
    _, full = routing.dopd_regimes(stats["gap"], stats["qS"], stats["qT"], ro.mask_BT)
    rows = microbatch.split_rows(jnp.arange(ro.tokens_BT.shape[0]), num_microbatches)[0]
    _, part = routing.dopd_regimes(*(stats[k][rows] for k in ("gap", "qS", "qT")), ro.mask_BT[rows])
    assert abs(float(part["A_bar"]) - float(full["A_bar"])) > 1e-3


@pytest.mark.parametrize(
    "method,loss_kw,counts",
    [
        ("dopd", {"chunk_size": 3}, (1, 2, 4)),
        ("opd", {}, (1, 2, 4)),
        ("opd", {"form": "analytic"}, (4,)),
    ],
)
def test_microbatched_step_equals_full_batch_update(setup, method, loss_kw, counts):
    gs, ps, gt, pt, batch = setup
    spec = _spec(method, **loss_kw)
    opt = optax.sgd(0.5)  # linear in the gradient, so params compare at float32 precision
    ro = _rollout(gs, ps, spec, batch)
    state = _copy_state(ps, opt)
    targets = jax.jit(lambda s, t, b, r: steps.score_step(_g(gs, gt), spec, s, t, b, r))(
        state, _t(pt), batch, ro
    )
    ref_state, ref_m = jax.jit(lambda s, r, t: steps.update_step(_g(gs), opt, spec, s, r, t))(
        state, ro, targets
    )
    lengths = np.asarray(ro.mask_BT.sum(1))
    assert len(set(lengths.tolist())) > 1  # unequal micro-batches in tokens
    if method == "dopd":  # so the A_bar / qS_bar / qT_bar comparisons below can fail
        _check_refs_differ_per_microbatch(targets, ro, max(counts))
    for m in counts:
        step = microbatch.make_microbatched_update(_g(gs, gt), opt, spec, m, remat=m != 2)
        new_state, metrics = step(_copy_state(ps, opt), _t(pt), batch, ro)
        assert set(metrics) == set(ref_m), m
        for key in ref_m:
            np.testing.assert_allclose(
                metrics[key], ref_m[key], rtol=2e-5, atol=2e-6, err_msg=f"{key}, {m} micro-batches"
            )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
            new_state.params,
            ref_state.params,
        )
        assert int(new_state.step) == 1


def test_split_rows_spreads_every_microbatch_over_row_blocks():
    rows_MB = microbatch.split_rows(jnp.arange(16), 4)
    np.testing.assert_array_equal(rows_MB[1], [1, 5, 9, 13])
    np.testing.assert_array_equal(np.sort(rows_MB.ravel()), np.arange(16))


def test_trace_once_donates_state_not_teacher(setup):
    gs, ps, gt, pt, _ = setup
    traces = []
    base = get_method("opd")

    def counting_loss(*args, **kw):
        traces.append(1)
        return base.loss(*args, **kw)

    spec = dataclasses.replace(_spec("opd"), method=dataclasses.replace(base, loss=counting_loss))
    opt = optax.adam(1e-3)
    step = microbatch.make_microbatched_update(_g(gs, gt), opt, spec, 2)
    state = _copy_state(ps, opt)
    rng = np.random.default_rng(1)
    for _ in range(3):
        batch = _batch(rng)  # new data, same shapes: must not retrace
        ro = _rollout(gs, state.params, spec, batch, empty_row=False)
        old = state
        state, _ = step(state, _t(pt), batch, ro)
        assert old.params["embed"]["embedding"][...].is_deleted()
    assert len(traces) == 1 and int(state.step) == 3
    assert not pt["embed"]["embedding"][...].is_deleted()


def test_sharded_step_matches_unsharded(setup):
    gs, ps, gt, pt, _ = setup
    spec = _spec("dopd")
    batch = _batch(np.random.default_rng(2), b=8)
    ro = _rollout(gs, ps, spec, batch)
    opt = optax.sgd(0.5)
    _, plain = microbatch.make_microbatched_update(_g(gs, gt), opt, spec, 2)(
        _copy_state(ps, opt), _t(pt), batch, ro
    )
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    state = sharding.init_state_sharded(sharding.shard_params(ps, mesh), opt, mesh, False)
    teacher = _t(sharding.shard_params(pt, mesh))
    sh = sharding.step_shardings(mesh, opt, state, teacher)
    step = microbatch.make_microbatched_update(_g(gs, gt), opt, spec, 2, shardings=sh)
    _, m = step(state, teacher, sharding.shard_batch(batch, mesh), sharding.shard_batch(ro, mesh))
    for key in ("loss", "grad_norm", "A_bar", "frac_HS", "loss_HT", "kl_to_teacher"):
        np.testing.assert_allclose(m[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_bad_microbatching_is_a_value_error(setup):
    gs, ps, gt, pt, batch = setup
    spec = _spec("opd")
    opt = optax.sgd(0.1)
    ro = _rollout(gs, ps, spec, batch)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_microbatches must be an int"):
            microbatch.make_microbatched_update(_g(gs, gt), opt, spec, bad)
    with pytest.raises(ValueError, match="do not split into num_microbatches=3"):
        microbatch.make_microbatched_update(_g(gs, gt), opt, spec, 3)(
            _copy_state(ps, opt), _t(pt), batch, ro
        )
    mesh = sharding.make_mesh({"fsdp": 8})
    state = sharding.init_state_sharded(sharding.shard_params(ps, mesh), opt, mesh, False)
    teacher = _t(sharding.shard_params(pt, mesh))
    sh = sharding.step_shardings(mesh, opt, state, teacher)
    batch8 = _batch(np.random.default_rng(4), b=8)  # 16 rows: 4 micro-batches of 4 rows
    ro8 = _rollout(gs, ps, spec, batch8)
    with pytest.raises(ValueError, match="4 rows do not split over 8 data-parallel shards"):
        microbatch.make_microbatched_update(_g(gs, gt), opt, spec, 4, shardings=sh)(
            state, teacher, sharding.shard_batch(batch8, mesh), sharding.shard_batch(ro8, mesh)
        )
    with pytest.raises(ValueError, match="needs teacher shardings"):
        microbatch.make_microbatched_update(
            _g(gs, gt), opt, spec, 1, shardings=dataclasses.replace(sh, teachers=None)
        )


# ---- refs: reference values computed elsewhere (routing.dopd_regimes, losses.dopd_loss) ----


def _stats(seed, b=3, t=7):
    rng = np.random.default_rng(seed)
    lq = jnp.asarray(np.log(rng.uniform(0.01, 1.0, size=(2, b, t))), jnp.float32)
    mask = jnp.asarray(rng.uniform(size=(b, t)) < 0.8)
    return jnp.abs(lq[1] - lq[0]), jnp.exp(lq[0]), jnp.exp(lq[1]), mask


def test_regimes_with_own_refs_equal_default_and_other_refs_reroute():
    gap, qs, qt, mask = _stats(0)
    regimes, refs = routing.dopd_regimes(gap, qs, qt, mask)
    again, refs2 = routing.dopd_regimes(gap, qs, qt, mask, refs=refs)
    jax.tree.map(np.testing.assert_array_equal, (regimes, refs), (again, refs2))
    low = dict(refs, A_bar=-1.0)  # every gap is "large": only HT / HS remain
    routed, used = routing.dopd_regimes(gap, qs, qt, mask, refs=low)
    assert float(used["A_bar"]) == -1.0
    n_valid = float(mask.sum())
    assert float(routed["HT"].sum() + routed["HS"].sum()) == n_valid
    high = dict(refs, A_bar=1e9, qS_bar=2.0, qT_bar=2.0)  # small gaps, never confident: LL
    assert float(routing.dopd_regimes(gap, qs, qt, mask, refs=high)[0]["LL"].sum()) == n_valid


def test_bad_refs_are_value_errors():
    gap, qs, qt, mask = _stats(1)
    _, refs = routing.dopd_regimes(gap, qs, qt, mask)
    cases = [
        ({"A_bar": 0.1}, {}, "keys"),
        (dict(refs, A_bar=jnp.ones(2)), {}, "scalars"),
        (refs, {"gap_threshold": 0.5}, "not both"),
        ([0.1, 0.2, 0.3], {}, "dict"),
    ]
    for bad, kw, match in cases:
        with pytest.raises(ValueError, match=match):
            routing.dopd_regimes(gap, qs, qt, mask, refs=bad, **kw)


def test_dopd_loss_refs_default_unchanged_and_changes_loss_and_gradient():
    rng = np.random.default_rng(3)
    s, ps, t = (jnp.asarray(rng.normal(size=(3, 6, 11)) * 2, jnp.float32) for _ in range(3))
    tokens = jnp.asarray(rng.integers(0, 11, size=(3, 6)))
    mask = jnp.asarray(rng.uniform(size=(3, 6)) < 0.8)
    loss = lambda s_, **kw: losses.dopd_loss(s_, ps, t, tokens, mask, top_k=4, **kw)
    base, m = loss(s)
    same, m_same = loss(s, refs={k: m[k] for k in routing.REF_KEYS})
    np.testing.assert_allclose(same, base, rtol=1e-6)
    np.testing.assert_allclose(m_same["frac_HT"], m["frac_HT"])
    all_high = {"A_bar": -1.0, "qS_bar": m["qS_bar"], "qT_bar": m["qT_bar"]}
    other, m_other = loss(s, refs=all_high)
    assert float(m_other["frac_LH"] + m_other["frac_LL"]) == 0.0
    assert abs(float(other) - float(base)) > 1e-4
    g_base = jax.grad(lambda s_: loss(s_)[0])(s)
    g_other = jax.grad(lambda s_: loss(s_, refs=all_high)[0])(s)
    assert float(jnp.abs(g_other - g_base).max()) > 1e-4
