"""DOPD's ablations and guardrails as settings, and OPD's token pruning, each tested
on a case where the setting changes what is trained."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dopd_jax import losses
from dopd_jax.losses import divergences, routing, rules
from dopd_jax.methods import get_method
from dopd_jax.methods.dopd import regime_table
from dopd_jax.methods.opd import pruned_mask
from dopd_jax.steps import rollout as rollout_lib

B, T, V = 4, 6, 12


def _logits(seed, scale=2.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, V)) * scale, jnp.float32)


def _case():
    tokens = jnp.asarray(np.random.default_rng(9).integers(0, V, (B, T)))
    mask = jnp.ones((B, T), bool).at[3, 4:].set(False)
    return _logits(0), _logits(1), _logits(2), tokens, mask


def _ro(tokens, mask):
    b, t = tokens.shape
    return rollout_lib.Rollout(
        jnp.zeros((b, 2), jnp.int32),
        jnp.ones((b, 2), bool),
        tokens,
        mask,
        jnp.zeros((b, t)),
        jnp.zeros((b,), bool),
    )


def _dopd(cfg_kw, s, ps, t, tokens, mask, extra=None):
    m = get_method("dopd")
    cfg = m.make_config(dict(top_k=4, **cfg_kw))
    targets = {"priv_student": ps, "priv_teacher": t, **(extra or {})}
    return m.loss(s, targets, _ro(tokens, mask), cfg), cfg


def _reference(cfg, s, ps, t, tokens, mask, regimes):
    """sequence mean of sum_r w_r 1[r] D_r, each D_r from divergences.token_divergence."""
    total = 0.0
    for name, r in regime_table(cfg).items():
        target = t if r.target == "teacher" else ps
        top_k = 4 if r.granularity == "topk" else None
        d = divergences.token_divergence(s, target, kind=r.kind, beta=r.beta, top_k=top_k)
        total = total + r.weight * regimes[name] * d
    return divergences.sequence_mean(total, mask)


@pytest.mark.parametrize(
    "kw",
    [
        {"regimes": ("LH", "HT")},  # w/o student-side distillation
        {"regimes": ("LL", "HS")},  # w/o teacher-side distillation
        {"adaptive_weights": False},
        {"objective": "fkl"},
        {"granularity": "full"},
        {"objective": "jsd", "granularity": "topk", "adaptive_weights": False},
    ],
)
def test_ablation_settings_match_the_regime_table_reference(kw):
    s, ps, t, tokens, mask = _case()
    (loss, metrics), cfg = _dopd(kw, s, ps, t, tokens, mask)
    (base, _), _ = _dopd({}, s, ps, t, tokens, mask)
    stats = routing.privilege_stats(ps, t, tokens)
    regimes, _ = routing.dopd_regimes(stats["gap"], stats["qS"], stats["qT"], mask)
    np.testing.assert_allclose(loss, _reference(cfg, s, ps, t, tokens, mask, regimes), rtol=1e-5)
    assert abs(float(loss) - float(base)) > 1e-4  # the setting changes the objective
    dropped = [r for r in routing.REGIMES if r not in cfg.regimes]
    for r in dropped:
        assert float(metrics[f"loss_{r}"]) == 0.0


def test_sampled_granularity_trains_through_the_sampled_token_only():
    s, ps, t, tokens, mask = _case()
    kw = {"objective": "rkl", "granularity": "sampled"}
    loss_fn = lambda x: _dopd(kw, x, ps, t, tokens, mask)[0][0]  # noqa: E731
    g = np.asarray(jax.grad(loss_fn)(s))
    assert np.isfinite(float(loss_fn(s))) and np.abs(g).sum() > 0
    with pytest.raises(ValueError, match="needs objective 'fkl' or 'rkl'"):
        get_method("dopd").make_config({"granularity": "sampled"})


def test_skill_gap_moves_hint_only_tokens_out_of_HT():
    s, ps, t, tokens, mask = _case()
    stats = routing.privilege_stats(ps, t, tokens)
    base, refs = rules.dopd(stats, mask)
    # skill: the teacher is ahead without p on the first half of positions only
    skill = jnp.where(jnp.arange(T)[None, :] < T // 2, 2.0, -2.0) * jnp.ones((B, T))
    routed, refs2 = rules.skill_and(dict(stats, skill=skill), mask)
    moved = (base["HT"] > 0) & (skill < refs2["G_bar"])
    assert moved.any() and (base["HT"] * (skill >= refs2["G_bar"])).sum() > 0
    np.testing.assert_array_equal(routed["HT"], base["HT"] * ~moved)
    np.testing.assert_array_equal(routed["LH"], base["LH"] + moved)
    for r in ("LL", "HS"):
        np.testing.assert_array_equal(routed[r], base[r])
    # with refs from elsewhere (micro-batches) the rule routes against them
    again, _ = rules.skill_and(dict(stats, skill=skill), mask, refs=refs2)
    for r in routing.REGIMES:
        np.testing.assert_array_equal(again[r], routed[r])
    replaced, _ = rules.skill_replace(dict(stats, skill=skill), mask)
    assert not np.array_equal(replaced["HT"], base["HT"])


def test_skill_routing_scores_the_plain_passes_and_changes_the_loss():
    s, ps, t, tokens, mask = _case()
    plain_t, plain_s = _logits(3), _logits(4)
    m = get_method("dopd")
    cfg = m.make_config({"routing": "skill_and", "top_k": 4})
    assert {"teacher", "student"} <= set(m.passes(cfg))
    extra = {"teacher": plain_t, "student": plain_s}
    (loss, metrics), _ = _dopd({"routing": "skill_and"}, s, ps, t, tokens, mask, extra)
    (base, _), _ = _dopd({}, s, ps, t, tokens, mask)
    assert "G_bar" in metrics and float(loss) != float(base)


def test_uniform_and_user_rules_by_name():
    s, ps, t, tokens, mask = _case()
    (_, metrics), _ = _dopd({"routing": "uniform"}, s, ps, t, tokens, mask)
    assert float(metrics["frac_HT"]) == 1.0
    (_, via_path), _ = _dopd({"routing": "dopd_jax.losses.rules:uniform"}, s, ps, t, tokens, mask)
    assert float(via_path["frac_HT"]) == 1.0
    with pytest.raises(ValueError, match=r"unknown routing rule 'best'; valid: \['dopd'"):
        get_method("dopd").make_config({"routing": "best"})
    with pytest.raises(ValueError, match="non-empty subset"):
        get_method("dopd").make_config({"regimes": ("XX",)})


def test_without_privileged_input_both_passes_see_x_only():
    m = get_method("dopd")
    passes = m.passes(m.make_config({"privileged": False}))
    assert {p.prefix for p in passes.values()} == {"x"}
    assert m.main_slot(m.make_config({"privileged": False})) == "teacher"


# ------------------------------------------------------------ OPD token pruning


@pytest.mark.parametrize("mode", ["low_gap", "high_gap"])
def test_gap_pruning_drops_the_fraction_with_the_lowest_or_highest_gap(mode):
    _, ps, t, tokens, mask = _case()
    cfg = get_method("opd").make_config({"prune": mode, "prune_fraction": 0.25})
    keep = np.asarray(pruned_mask(cfg, {"priv_student": ps, "priv_teacher": t}, tokens, mask))
    gap = np.asarray(routing.privilege_stats(ps, t, tokens)["gap"])[np.asarray(mask)]
    kept = keep[np.asarray(mask)]
    q = np.percentile(gap, 25 if mode == "low_gap" else 75)
    np.testing.assert_array_equal(kept, gap > q if mode == "low_gap" else gap < q)
    assert 0.2 < 1 - kept.mean() < 0.3
    assert not keep[~np.asarray(mask)].any()


def test_random_pruning_and_its_loss():
    s, ps, t, tokens, mask = _case()
    opd = get_method("opd")
    cfg = opd.make_config({"prune": "random", "prune_fraction": 0.5})
    keep = np.asarray(pruned_mask(cfg, {}, tokens, mask))
    assert 0.2 < keep.sum() / np.asarray(mask).sum() < 0.8
    loss, metrics = opd.loss(s, {"teacher": t}, _ro(tokens, mask), cfg)
    want, _ = losses.opd_pg_loss(s, t, tokens, jnp.asarray(keep))
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert 0 < float(metrics["pruned_frac"]) < 1
    gap_cfg = opd.make_config({"prune": "high_gap"})
    assert {"priv_teacher", "priv_student"} <= set(opd.passes(gap_cfg))
    assert opd.refs_for(gap_cfg) is not None and opd.refs_for(cfg) is None


def test_priv_t_priv_s_samples_and_trains_the_student_given_p():
    import optax
    from flax import nnx

    from dopd_jax import steps
    from dopd_jax.models import ModelConfig, Transformer

    mc = ModelConfig(
        vocab_size=V, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=16
    )
    gd, params = nnx.split(Transformer(mc, rngs=nnx.Rngs(0)))
    privt = get_method("privt")
    sampler = rollout_lib.SamplerConfig(max_new_tokens=3, eos_id=1, pad_id=0)
    spec = steps.DistillSpec(privt, privt.make_config({"student_prefix": "x+p"}), sampler)
    prompt = np.full((2, 3), 5, np.int32)
    priv = np.full((2, 6), 7, np.int32)
    batch = steps.PromptBatch(prompt, prompt > 0, priv, priv > 0)
    state = steps.init_state(params, optax.sgd(0.1), keep_ref=False)
    ro = steps.rollout_step({"student": gd}, spec, state, {}, batch, jax.random.key(0))
    np.testing.assert_array_equal(ro.prompt_BP, priv)
    with pytest.raises(ValueError, match="student_prefix must be one of"):
        privt.make_config({"student_prefix": "p"})
    assert dataclasses.is_dataclass(spec)


def test_wrong_hint_contrast_cuts_the_tokens_that_copy_the_hint():
    s, ps, t, tokens, mask = _case()
    wrong = _logits(5)
    extra = {"wrongp_teacher": wrong}
    m = get_method("dopd")
    assert m.passes(m.make_config({"wrong_hint_cut": 0.0}))["wrongp_teacher"].prefix == "x+p'"
    (cut, metrics), _ = _dopd({"wrong_hint_cut": 0.0}, s, ps, t, tokens, mask, extra)
    (base, _), cfg = _dopd({}, s, ps, t, tokens, mask)
    contrast = divergences.sampled_logprobs(t, tokens) - divergences.sampled_logprobs(wrong, tokens)
    copied = contrast > routing.trimmed_mean(contrast, mask)
    assert 0 < float(metrics["cut_frac"]) < 1
    # the reference: the paper's loss with the copying tokens' weight set to 0
    stats = routing.privilege_stats(ps, t, tokens)
    regimes, _ = routing.dopd_regimes(stats["gap"], stats["qS"], stats["qT"], mask)
    regimes = {r: v * ~copied for r, v in regimes.items()}
    np.testing.assert_allclose(cut, _reference(cfg, s, ps, t, tokens, mask, regimes), rtol=1e-5)
    assert float(cut) != float(base)
    with pytest.raises(ValueError, match="needs privileged=True"):
        m.make_config({"wrong_hint_cut": 0.5, "privileged": False})


def test_wrong_hint_prefixes_are_a_derangement_of_the_batch():
    from dopd_jax.data import encode
    from dopd_jax.data.example import Example
    from dopd_jax.steps import scoring

    class Tok:
        bos_id, pad_id, chat = 1, 0, None

        def encode(self, text):
            return [ord(c) for c in text]

    exs = [Example(f"Q{i}", {"none": "", "hints": f" h{i}"}) for i in range(3)]
    b = encode.encode_prompts(
        exs, Tok(), form="hints", max_prompt_len=4, max_priv_len=8, wrong_hints=True
    )
    for i in range(3):
        want = [1] + [ord(c) for c in f"Q{i} h{(i + 1) % 3}"]
        assert b.wrong_priv_BQ[i][b.wrong_priv_mask_BQ[i]].tolist() == want
    with pytest.raises(ValueError, match="at least 2 prompts"):
        encode.encode_prompts(
            exs[:1], Tok(), form="hints", max_prompt_len=4, max_priv_len=8, wrong_hints=True
        )
    from dopd_jax.methods.base import Pass

    with pytest.raises(ValueError, match="wrong_hints=True"):
        scoring.pass_prefix(Pass("teacher", "x+p'"), None, None, None, None)
