"""Step functions: learning on a fixed batch, trace guards, jit parity, ref params."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dopd_jax import steps
from dopd_jax.methods import METHODS, get_method
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.steps import rollout as rollout_lib

V = 24
EOS, PAD = 1, 0


def _model(seed, d=16):
    cfg = ModelConfig(
        vocab_size=V, d_model=d, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=d // 2, d_ff=2 * d
    )
    return nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))


def _batch(rng, b=4, p=6, q=10):
    lens = rng.integers(2, p + 1, size=b)
    prompt = np.zeros((b, p), np.int32)
    mask = np.zeros((b, p), bool)
    priv = np.zeros((b, q), np.int32)
    pmask = np.zeros((b, q), bool)
    for i, n in enumerate(lens):
        ids = rng.integers(4, V, size=n)
        hint = rng.integers(4, V, size=q - p)
        prompt[i, p - n :], mask[i, p - n :] = ids, True
        full = np.concatenate([ids, hint])
        priv[i, q - len(full) :], pmask[i, q - len(full) :] = full, True
    return steps.DistillBatch(
        jnp.asarray(prompt), jnp.asarray(mask), jnp.asarray(priv), jnp.asarray(pmask)
    )


def _spec(method, **kw):
    sampler = rollout_lib.SamplerConfig(max_new_tokens=8, eos_id=EOS, pad_id=PAD, n_samples=2)
    m = get_method(method)
    if method == "dopd":
        kw.setdefault("top_k", 8)
    return steps.DistillSpec(m, m.make_config(kw), sampler, diag_top_k=8)


def _g(gs, gt=None):
    return {"student": gs} if gt is None else {"student": gs, "teacher": gt}


@pytest.fixture(scope="module")
def setup():
    gs, ps = _model(0)
    gt, pt = _model(1, d=24)
    return gs, ps, gt, pt, _batch(np.random.default_rng(0))


@pytest.mark.parametrize(
    "method,loss_kw",
    [
        ("dopd", {}),
        ("opd", {"form": "analytic"}),
        ("opsd", {}),
        ("privt", {"form": "analytic"}),
    ],
)
def test_update_lowers_loss_on_fixed_batch(setup, method, loss_kw):
    gs, ps, gt, pt, batch = setup
    spec = _spec(method, **loss_kw)
    opt = optax.adam(3e-2)
    state = steps.init_state(jax.tree.map(jnp.copy, ps), opt, keep_ref=method == "opsd")
    ro = steps.rollout_step(_g(gs), spec, state, {}, batch, jax.random.key(0))
    targets = steps.score_step(_g(gs, gt), spec, state, {"teacher": pt}, batch, ro)
    update = jax.jit(functools.partial(steps.update_step, _g(gs), opt, spec))
    losses = []
    for _ in range(15):
        state, m = update(state, ro, targets)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses


def test_pg_update_lowers_sampled_kl(setup):
    gs, ps, gt, pt, batch = setup
    spec = _spec("opd")
    opt = optax.adam(3e-2)
    state = steps.init_state(jax.tree.map(jnp.copy, ps), opt, keep_ref=False)
    ro = steps.rollout_step(_g(gs), spec, state, {}, batch, jax.random.key(0))
    targets = steps.score_step(_g(gs, gt), spec, state, {"teacher": pt}, batch, ro)
    update = jax.jit(functools.partial(steps.update_step, _g(gs), opt, spec))
    kls = []
    for _ in range(15):
        state, m = update(state, ro, targets)
        kls.append(float(m["kl_to_teacher"]))
    assert kls[-1] < kls[0] - 0.1, kls


def test_distill_fns_trace_once(setup):
    gs, ps, gt, pt, _ = setup
    traces = []
    base = get_method("dopd")

    def counting_loss(*args, **kw):
        traces.append(1)
        return base.loss(*args, **kw)

    spec = dataclasses.replace(_spec("dopd"), method=dataclasses.replace(base, loss=counting_loss))
    opt = optax.adam(1e-3)
    fns = steps.make_distill_fns(_g(gs, gt), opt, spec)
    state = steps.init_state(jax.tree.map(jnp.copy, ps), opt, keep_ref=False)
    rng = np.random.default_rng(1)
    for _ in range(3):
        batch = _batch(rng)  # new data, same shapes: must not retrace
        ro = fns.rollout(state, {"teacher": pt}, batch, jax.random.key(0))
        targets = fns.score(state, {"teacher": pt}, batch, ro)
        state, _ = fns.update(state, ro, targets)
    assert len(traces) == 1
    assert int(state.step) == 3


def test_distill_step_jit_parity(setup):
    gs, ps, gt, pt, batch = setup
    spec = _spec("dopd")
    opt = optax.adam(1e-3)
    step = functools.partial(steps.distill_step, _g(gs, gt), opt, spec)
    state = steps.init_state(ps, opt, keep_ref=False)
    s1, m1 = step(state, {"teacher": pt}, batch, jax.random.key(3))
    s2, m2 = jax.jit(step)(state, {"teacher": pt}, batch, jax.random.key(3))
    for k in ("loss", "frac_HS", "A_bar", "kl_to_teacher", "kl_to_priv_teacher"):
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, atol=1e-5, err_msg=k)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1.params, s2.params
    )


def test_teacher_params_get_no_update_and_ref_modes(setup):
    gs, ps, gt, pt, batch = setup
    opt = optax.adam(1e-2)
    for mode in ("frozen", "ema"):
        spec = _spec("dopd", priv_student=mode)
        state = steps.init_state(jax.tree.map(jnp.copy, ps), opt, keep_ref=True)
        ref0 = jax.tree.map(jnp.copy, state.ref_params)
        new, _ = steps.distill_step(
            _g(gs, gt), opt, spec, state, {"teacher": pt}, batch, jax.random.key(0)
        )
        delta = optax.tree.norm(jax.tree.map(jnp.subtract, new.ref_params, ref0))
        assert (float(delta) == 0.0) == (mode == "frozen"), mode


def test_score_step_logs_extra_passes(setup):
    gs, ps, gt, pt, batch = setup
    spec = _spec("opsd", priv_student="frozen")
    state = steps.init_state(ps, optax.adam(1e-3), keep_ref=True)
    ro = steps.rollout_step(_g(gs), spec, state, {}, batch, jax.random.key(0))
    targets = steps.score_step(_g(gs, gt), spec, state, {"teacher": pt}, batch, ro)
    assert set(targets) == {"priv_student", "logp_teacher_BT", "logp_priv_teacher_BT"}
    assert targets["priv_student"].shape == ro.tokens_BT.shape + (V,)


def test_sft_step_lowers_loss():
    gs, ps = _model(0)
    opt = optax.adam(1e-2)
    state = steps.init_state(ps, opt, keep_ref=False)
    rng = np.random.default_rng(0)
    ids = rng.integers(4, V, size=(4, 9)).astype(np.int32)
    batch = steps.SFTBatch(
        jnp.asarray(ids[:, :-1]),
        jnp.asarray(ids[:, 1:]),
        jnp.asarray(np.arange(8)[None].repeat(4, 0) >= 3),
        jnp.ones((4, 8), bool),
    )
    fn = steps.make_sft_fn(gs, opt)
    first = None
    for _ in range(20):
        state, m = fn(state, batch)
        first = first if first is not None else float(m["loss"])
    assert float(m["loss"]) < 0.5 * first


def test_every_method_is_registered_with_known_passes():
    for m in METHODS.values():
        passes = m.passes(m.config_cls())
        slot = m.main_slot(m.config_cls())
        assert slot in passes or (slot is None and "teacher" not in passes)
        assert set(passes) <= {"teacher", "priv_teacher", "priv_student", "ref"}
    with pytest.raises(ValueError, match="unknown method 'gkd2'"):
        get_method("gkd2")


@pytest.mark.parametrize("method", ["dopd", "opd"])
@pytest.mark.parametrize("num_microbatches", [0, 2])
def test_lean_phases_make_the_same_update_without_diagnostics(setup, method, num_microbatches):
    gs, ps, gt, pt, batch = setup
    spec = _spec(method, form="analytic") if method == "opd" else _spec(method)
    opt = optax.sgd(0.5)  # linear in the gradient, so params compare at float32 precision
    if num_microbatches:
        fns = steps.microbatch.make_microbatched_fns(_g(gs, gt), opt, spec, num_microbatches)
    else:
        fns = steps.make_distill_fns(_g(gs, gt), opt, spec)
    teachers = {"teacher": pt}
    out = {}
    for log in (True, False):
        state = steps.init_state(jax.tree.map(jnp.copy, ps), opt, keep_ref=False)
        ro = fns.rollout(state, teachers, batch, jax.random.key(0))
        score, update = fns.phase_fns(log)
        targets = score(state, teachers, batch, ro)
        if not num_microbatches:  # the diagnostic pass is scored only when logging
            assert ("logp_priv_teacher_BT" in targets) == (log and method == "opd")
            assert ("logp_teacher_BT" in targets) == (log and method == "dopd")
        out[log] = update(state, ro, targets)
    (full_state, full_m), (lean_state, lean_m) = out[True], out[False]
    assert "kl_to_teacher" in full_m and "topk_overlap" in full_m
    assert not {"kl_to_teacher", "topk_overlap", "student_entropy"} & set(lean_m)
    assert set(lean_m) < set(full_m)
    for key in lean_m:  # the loss and the method's own metrics are the logged step's
        np.testing.assert_allclose(lean_m[key], full_m[key], rtol=1e-6, atol=1e-7, err_msg=key)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        lean_state.params,
        full_state.params,
    )


@pytest.mark.parametrize("lean_steps", [True, False])
def test_runner_builds_lean_phases_unless_turned_off(setup, lean_steps):
    from types import SimpleNamespace

    from dopd_jax.pipeline import distill_stage

    gs, _, gt, _, _ = setup
    run = SimpleNamespace(num_microbatches=1, remat=False, lean_steps=lean_steps)
    fns = distill_stage.make_fns(_g(gs, gt), optax.sgd(0.1), _spec("opd"), run, None)
    score, update = fns.phase_fns(False)
    assert (score is fns.score_lean and update is fns.update_lean) == lean_steps
    assert (score is fns.score and update is fns.update) != lean_steps
