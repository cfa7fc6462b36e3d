"""GKD, GRPO, MOPD and Param-Merge at the step level: response sources, routed
teachers, losses against direct formulas, gradients, and bad-input errors."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dopd_jax import steps
from dopd_jax.data.example import Example
from dopd_jax.methods import get_method
from dopd_jax.methods.mopd import MergeConfig, merge_params
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.pipeline import data_checks
from dopd_jax.steps import outcome
from dopd_jax.steps import rollout as rollout_lib

V, EOS, PAD, T, N = 24, 1, 0, 6, 2
DOMAINS = ("arith", "sort")


def _model(seed, d=16):
    cfg = ModelConfig(
        vocab_size=V, d_model=d, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=d // 2, d_ff=2 * d
    )
    return nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))


def _batch(b=4, p=5):
    rng = np.random.default_rng(0)
    prompt = rng.integers(4, V, (b, p)).astype(np.int32)
    gold = rng.integers(4, V, (b, T)).astype(np.int32)
    gold_mask = np.ones((b, T), bool)
    gold[:, 3], gold_mask[:, 4:] = EOS, False  # y = 3 tokens + EOS
    gold[:, 4:] = PAD
    ones = np.ones((b, p), bool)
    domains = np.array([0, 1, 1, 0], np.int32)[:b]
    return steps.PromptBatch(prompt, ones, prompt, ones, domains, gold, gold_mask)


def _spec(name, **kw):
    m = get_method(name)
    sampler = rollout_lib.SamplerConfig(max_new_tokens=T, eos_id=EOS, pad_id=PAD, n_samples=N)
    return steps.DistillSpec(m, m.make_config(kw), sampler, log_passes=(), domains=DOMAINS)


@pytest.fixture(scope="module")
def models():
    gs, ps = _model(0)
    (ga, pa), (gb, pb) = _model(1), _model(2)
    graphdefs = {"student": gs, "teacher": ga, "teacher/arith": ga, "teacher/sort": gb}
    teachers = {"teacher": pa, "teacher/arith": pa, "teacher/sort": pb}
    state = steps.init_state(ps, optax.sgd(0.1), keep_ref=True)
    return graphdefs, teachers, state


def _rollout(models, spec, step=0):
    graphdefs, teachers, state = models
    state = dataclasses.replace(state, step=jnp.int32(step))
    return steps.rollout_step(graphdefs, spec, state, teachers, _batch(), jax.random.key(3))


# --------------------------------------------------------------------- GKD


def test_gkd_draws_the_response_source_per_step_from_the_key(models):
    graphdefs, teachers, state = models
    spec = _spec("gkd", lmbda=0.5)
    fn = jax.jit(functools.partial(steps.rollout_step, graphdefs, spec))

    def draw(step):
        st = dataclasses.replace(state, step=jnp.int32(step))
        return fn(st, teachers, _batch(), jax.random.key(3))

    draws = [float(draw(s).on_policy_B.mean()) for s in range(12)]
    assert set(draws) == {0.0, 1.0}  # whole batches, both kinds within 12 steps
    assert draws == [float(draw(s).on_policy_B.mean()) for s in range(12)]
    off = draw(draws.index(0.0))
    np.testing.assert_array_equal(off.tokens_BT, np.repeat(_batch().response_BT, N, 0))
    np.testing.assert_array_equal(off.mask_BT, np.repeat(_batch().response_mask_BT, N, 0))
    assert not np.any(off.truncated_B)
    on = _rollout(models, _spec("gkd", lmbda=1.0))
    assert on.on_policy_B is None  # lmbda = 1 is plain on-policy sampling


def test_gkd_seq_kd_samples_from_the_teacher(models):
    graphdefs, teachers, state = models
    ro = _rollout(models, _spec("gkd", lmbda=0.0, seq_kd=True))
    key = jax.random.fold_in(jax.random.key(3), 0)
    b = _batch()
    want = rollout_lib.sample(
        graphdefs["teacher"],
        teachers["teacher"],
        b.prompt_BP,
        b.prompt_mask_BP,
        key,
        _spec("gkd").sampler,
    )
    np.testing.assert_array_equal(ro.tokens_BT, want.tokens_BT)
    assert not np.any(ro.on_policy_B)


def test_routed_teacher_samples_each_row_from_its_domain_teacher(models):
    graphdefs, teachers, _ = models
    ro = _rollout(models, _spec("gkd", lmbda=0.0, seq_kd=True, teacher_role="teacher/@domain"))
    b, key = _batch(), jax.random.fold_in(jax.random.key(3), 0)
    rows = np.repeat(b.domain_ids_B, N)
    for d, name in enumerate(DOMAINS):
        r = f"teacher/{name}"
        want = rollout_lib.sample(
            graphdefs[r], teachers[r], b.prompt_BP, b.prompt_mask_BP, key, _spec("gkd").sampler
        )
        np.testing.assert_array_equal(ro.tokens_BT[rows == d], want.tokens_BT[rows == d])


@pytest.mark.parametrize("granularity", ["full", "topk", "sampled"])
def test_gkd_update_changes_only_the_student(models, granularity):
    graphdefs, teachers, state = models
    kind = "fkl" if granularity == "sampled" else "jsd"
    spec = _spec("gkd", lmbda=0.5, granularity=granularity, kind=kind, top_k=4)
    fns = steps.make_distill_fns(graphdefs, optax.sgd(0.1), spec)
    st = steps.init_state(jax.tree.map(jnp.copy, state.params), optax.sgd(0.1), keep_ref=False)
    before = jax.tree.map(np.asarray, teachers)
    ro = fns.rollout(st, teachers, _batch(), jax.random.key(0))
    new, m = fns.update(st, ro, fns.score(st, teachers, _batch(), ro))
    assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
    assert "on_policy_frac" in m
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, teachers))


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"lmbda": 1.5}, r"lmbda must be in \[0, 1\]"),
        ({"kind": "tvd"}, r"gkd kind must be one of \('fkl', 'rkl', 'jsd'\)"),
        ({"granularity": "token"}, r"granularity must be one of \('full', 'topk', 'sampled'\)"),
        ({"granularity": "sampled"}, r"granularity='sampled' must be one of \('fkl', 'rkl'\)"),
        ({"teacher_role": "student"}, "teacher role"),
    ],
)
def test_gkd_bad_config_names_the_valid_choices(kw, message):
    with pytest.raises(ValueError, match=message):
        get_method("gkd").make_config(kw)


def test_gkd_on_gold_needs_responses_unless_seq_kd():
    gkd = get_method("gkd")
    assert "response" in gkd.required_fields(gkd.make_config({"lmbda": 0.5}))
    assert "response" not in gkd.required_fields(gkd.make_config({"lmbda": 0.5, "seq_kd": True}))
    from dopd_jax.data import jsonl

    with pytest.raises(ValueError, match="response"):
        jsonl.required_fields([Example("Q: 1+1=?", answer="2")], ["response"], "training data")
    assert data_checks  # the pipeline's check (data_checks._check_fields) calls the same


# --------------------------------------------------------------------- MOPD


def test_mopd_scores_each_row_with_its_domain_teacher_only(models):
    graphdefs, teachers, state = models
    spec = _spec("mopd")
    ro = _rollout(models, spec)
    targets = steps.score_step(graphdefs, spec, state, teachers, _batch(), ro)
    rows = np.asarray(ro.domain_B)
    for d, name in enumerate(DOMAINS):
        r = f"teacher/{name}"
        want = steps.scoring.teacher_forced_logits(
            graphdefs[r], teachers[r], ro.prompt_BP, ro.prompt_mask_BP, ro.tokens_BT
        )
        np.testing.assert_allclose(targets["teacher"][rows == d], np.asarray(want)[rows == d])


def _logp(logits, tokens):
    return np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), tokens[..., None], -1)[..., 0]


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_mopd_pg_loss_is_the_clipped_advantage_policy_gradient(alpha):
    rng = np.random.default_rng(4)
    b, t = 4, 5
    s, teacher = rng.normal(size=(b, t, V)) * 3, rng.normal(size=(b, t, V)) * 3
    tokens = rng.integers(0, V, (b, t))
    mask = np.ones((b, t), bool)
    ro = rollout_lib.Rollout(
        jnp.zeros((b, 2), jnp.int32),
        jnp.ones((b, 2), bool),
        jnp.asarray(tokens),
        jnp.asarray(mask),
        jnp.zeros((b, t)),
        jnp.zeros((b,), bool),
        advantage_B=jnp.asarray([1.0, -1.0, 0.5, 0.0]),
    )
    mopd = get_method("mopd")
    cfg = mopd.make_config({"alpha": alpha, "adv_clip": 2.0})
    loss_fn = lambda x: mopd.loss(x, {"teacher": jnp.asarray(teacher)}, ro, cfg)[0]  # noqa: E731
    adv = (
        np.clip(_logp(teacher, tokens) - _logp(s, tokens), -2, 2)
        + alpha * np.asarray(ro.advantage_B)[:, None]
    )
    assert np.abs(_logp(teacher, tokens) - _logp(s, tokens)).max() > 2  # the clip is active
    want = np.mean((-adv * _logp(s, tokens)).mean(1))
    np.testing.assert_allclose(float(loss_fn(jnp.asarray(s))), want, rtol=1e-5)
    # the gradient is the advantage-weighted score function, advantage held fixed
    probs = np.asarray(jax.nn.softmax(s))
    onehot = np.eye(V)[tokens]
    want_g = -adv[..., None] * (onehot - probs) / (b * t)
    np.testing.assert_allclose(jax.grad(loss_fn)(jnp.asarray(s)), want_g, atol=1e-6)


def test_mopd_topk_is_the_generalized_reverse_kl_over_the_teacher_top_k():
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(2, 3, V)), rng.normal(size=(2, 3, V))
    ro = rollout_lib.Rollout(
        jnp.zeros((2, 2), jnp.int32),
        jnp.ones((2, 2), bool),
        jnp.zeros((2, 3), jnp.int32),
        jnp.ones((2, 3), bool),
        jnp.zeros((2, 3)),
        jnp.zeros((2,), bool),
    )
    mopd = get_method("mopd")
    loss, _ = mopd.loss(
        jnp.asarray(s),
        {"teacher": jnp.asarray(t)},
        ro,
        mopd.make_config({"form": "topk", "top_k": 4}),
    )
    ps, pt = np.asarray(jax.nn.softmax(s)), np.asarray(jax.nn.softmax(t))
    idx = np.argsort(-pt, -1)[..., :4]
    a, c = np.take_along_axis(ps, idx, -1), np.take_along_axis(pt, idx, -1)
    np.testing.assert_allclose(float(loss), (a * np.log(a / c) - a + c).sum(-1).mean(), rtol=1e-5)


def test_mopd_loss_and_routing_bad_inputs():
    with pytest.raises(ValueError, match=r"mopd form must be one of \('pg', 'topk'\)"):
        get_method("mopd").make_config({"form": "kl"})
    with pytest.raises(ValueError, match="is_clip must be"):
        get_method("mopd").make_config({"is_clip": (2.0, 1.0)})
    with pytest.raises(ValueError, match="needs DistillSpec.domains"):
        steps.scoring.check_routing((), jnp.zeros(2, jnp.int32))


# --------------------------------------------------------------------- GRPO


def test_grpo_update_uses_the_group_advantage_and_a_frozen_reference(models):
    graphdefs, teachers, state = models
    spec = _spec("grpo", kl_coef=0.1)
    assert spec.ref_update == "frozen" and "ref" in spec.passes
    fns = steps.make_distill_fns(graphdefs, optax.sgd(0.5), spec)
    st = steps.init_state(jax.tree.map(jnp.copy, state.params), optax.sgd(0.5), keep_ref=True)
    ro = fns.rollout(st, teachers, _batch(), jax.random.key(0))
    rewards = np.array([1, 0, 0, 0, 1, 1, 0, 1], np.float32)
    ro = outcome.with_rewards(ro, rewards, N)
    np.testing.assert_allclose(ro.advantage_B, outcome.group_advantage(rewards, N))
    start = jax.tree.map(jnp.copy, st.params)
    new, m = fns.update(st, ro, fns.score(st, teachers, _batch(), ro))
    assert float(m["kl_ref"]) == pytest.approx(0.0, abs=1e-6)  # ref = the start
    assert float(m["grad_norm"]) > 0
    # rows with positive advantage become more likely, negative ones less
    logp = lambda p: _logp(  # noqa: E731
        steps.scoring.teacher_forced_logits(
            graphdefs["student"], p, ro.prompt_BP, ro.prompt_mask_BP, ro.tokens_BT
        ),
        np.asarray(ro.tokens_BT),
    )
    mask = np.asarray(ro.mask_BT)
    delta = ((logp(new.params) - logp(start)) * mask).sum(1)
    adv = np.asarray(ro.advantage_B)
    assert np.all(delta[adv > 0.5] > 0) and np.all(delta[adv < -0.5] < 0)


# --------------------------------------------------------------------- merge


def test_merge_average_and_task_arithmetic():
    base = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([0.0], jnp.bfloat16)}
    teachers = {
        "teacher": {"w": jnp.array([9.0, 9.0]), "b": jnp.array([9.0], jnp.bfloat16)},
        "teacher/a": {"w": jnp.array([3.0, 2.0]), "b": jnp.array([2.0], jnp.bfloat16)},
        "teacher/b": {"w": jnp.array([1.0, 6.0]), "b": jnp.array([4.0], jnp.bfloat16)},
    }
    avg = merge_params(MergeConfig("average"), base, teachers)
    np.testing.assert_allclose(avg["w"], [2.0, 4.0])
    assert avg["b"].dtype == jnp.bfloat16 and float(avg["b"][0]) == 3.0
    ta = merge_params(MergeConfig("task_arithmetic", lam=0.5), base, teachers)
    np.testing.assert_allclose(ta["w"], [1.0 + 0.5 * (2 + 0), 2.0 + 0.5 * (0 + 4)])
    with pytest.raises(ValueError, match="student's architecture"):
        merge_params(MergeConfig(), base, {"teacher/a": {"w": jnp.zeros(3), "b": base["b"]}})
    with pytest.raises(ValueError, match="found none"):
        merge_params(MergeConfig(), base, {"teacher": base})


def test_memory_check_lowers_a_reward_reading_update(models):
    from dopd_jax.pipeline import memory_check

    graphdefs, teachers, state = models
    fns = steps.make_distill_fns(graphdefs, optax.sgd(0.1), _spec("grpo"))
    report = memory_check.phase_memory(
        fns, state, teachers, _batch(), jax.random.key(0), rewards=True
    )
    assert set(report) == {"rollout", "score", "update"}


@pytest.mark.parametrize(
    "name,kw",
    [
        ("gkd", {"granularity": "full"}),
        ("gkd", {"granularity": "sampled", "kind": "rkl"}),
        ("mopd", {"alpha": 0.5}),
        ("mopd", {"form": "topk", "alpha": 0.5}),
        ("grpo", {"kl_coef": 0.1}),
    ],
)
def test_gradients_reach_the_student_logits_only(name, kw):
    rng = np.random.default_rng(6)
    s, t = (jnp.asarray(rng.normal(size=(2, 3, V))) for _ in range(2))
    ro = rollout_lib.Rollout(
        jnp.zeros((2, 2), jnp.int32),
        jnp.ones((2, 2), bool),
        jnp.asarray(rng.integers(0, V, (2, 3))),
        jnp.ones((2, 3), bool),
        jnp.asarray(rng.normal(size=(2, 3)) - 3.0),
        jnp.zeros((2,), bool),
        on_policy_B=jnp.array([True, False]),
        advantage_B=jnp.array([1.0, -1.0]),
    )
    m = get_method(name)
    cfg = m.make_config(kw)
    slots = {p for p in m.passes(cfg)}
    loss = lambda s, t: m.loss(s, {k: t for k in slots}, ro, cfg)[0]  # noqa: E731
    g_s, g_t = jax.grad(loss, argnums=(0, 1))(s, t)
    assert np.abs(np.asarray(g_s)).sum() > 0
    assert not np.any(np.asarray(g_t))
