"""The plug-in framework: passes and roles, several teachers, method configs, the host loop."""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dopd_jax import losses, methods, steps
from dopd_jax.methods import Method, Pass, get_method, pass_from_name, pass_name
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.pipeline import config as config_lib
from dopd_jax.pipeline import specs
from dopd_jax.steps import rollout as rollout_lib
from dopd_jax.trainer import loop

V = 24


def _model(seed, d=16):
    cfg = ModelConfig(
        vocab_size=V, d_model=d, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=d // 2, d_ff=2 * d
    )
    return nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))


def _batch(b=4, p=6, q=10):
    rng = np.random.default_rng(0)
    prompt = rng.integers(4, V, size=(b, p)).astype(np.int32)
    priv = np.concatenate([prompt, rng.integers(4, V, size=(b, q - p))], 1).astype(np.int32)
    return steps.PromptBatch(
        jnp.asarray(prompt), jnp.ones((b, p), bool), jnp.asarray(priv), jnp.ones((b, q), bool)
    )


def _sampler(n=2):
    return rollout_lib.SamplerConfig(max_new_tokens=6, eos_id=1, pad_id=0, n_samples=n)


# ---------------------------------------------------------------- passes and roles


def test_pass_names_round_trip_and_bad_roles_are_named():
    for p in (
        Pass("teacher", "x"),
        Pass("teacher", "x+p"),
        Pass("student", "x+p"),
        Pass("ref", "x+p"),
        Pass("teacher/math", "x"),
        Pass("teacher/code", "x+p"),
    ):
        assert pass_from_name(pass_name(p)) == p
    assert pass_name(Pass("teacher", "x+p")) == "priv_teacher"
    for role in ("critic", "teacher/", "teacher/a/b"):
        with pytest.raises(ValueError, match="unknown model role"):
            Pass(role, "x")
    with pytest.raises(ValueError, match="prefix"):
        Pass("teacher", "p")


@pytest.mark.parametrize(
    "mode,role,update",
    [("live", "student", "none"), ("frozen", "ref", "frozen"), ("ema", "ref", "ema")],
)
def test_opsd_and_dopd_honour_priv_student(mode, role, update):
    for name in ("opsd", "dopd"):
        m = get_method(name)
        cfg = m.make_config({"priv_student": mode})
        assert m.passes(cfg)["priv_student"].role == role
        assert m.ref_update(cfg) == update


def _two_teacher_method():
    """MOPD-shaped: two named teachers, one on x and one on x + p."""

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        weight: float = 0.5

    def loss(student_BTV, targets, ro, cfg, *, chunk_size=None, refs=None):
        a, ma = losses.divergence_loss(
            student_BTV, targets["teacher/a"], ro.tokens_BT, ro.mask_BT, kind="rkl"
        )
        b, _ = losses.divergence_loss(
            student_BTV, targets["priv_teacher/b"], ro.tokens_BT, ro.mask_BT, kind="fkl"
        )
        return cfg.weight * a + (1 - cfg.weight) * b, ma

    passes = {"teacher/a": Pass("teacher/a", "x"), "priv_teacher/b": Pass("teacher/b", "x+p")}
    return Method(
        name="two",
        label="two teachers",
        config_cls=Cfg,
        passes=lambda c: passes,
        loss=loss,
        main_target="teacher/a",
    )


def test_several_named_teachers_in_one_step():
    gs, ps = _model(0)
    (ga, pa), (gb, pb) = _model(1, 24), _model(2, 32)
    method = _two_teacher_method()
    spec = steps.DistillSpec(method, method.config_cls(), _sampler(), log_passes=(), diag_top_k=4)
    opt = optax.adam(1e-2)
    graphdefs = {"student": gs, "teacher/a": ga, "teacher/b": gb}
    teachers = {"teacher/a": pa, "teacher/b": pb}
    state = steps.init_state(ps, opt, keep_ref=False)
    step = jax.jit(lambda s, t, b, k: steps.distill_step(graphdefs, opt, spec, s, t, b, k))
    new, m = step(state, teachers, _batch(), jax.random.key(0))
    assert np.isfinite(float(m["loss"])) and {"kl_to_teacher/a", "kl_to_priv_teacher/b"} <= set(m)
    with pytest.raises(ValueError, match=r"no model for role 'teacher/b'"):
        steps.distill_step(
            graphdefs, opt, spec, state, {"teacher/a": pa}, _batch(), jax.random.key(0)
        )


def test_diagnostic_log_probs_are_chunked_and_equal():
    gs, ps = _model(0)
    gt, pt = _model(1, 24)
    opd = get_method("opd")
    state = steps.init_state(ps, optax.sgd(0.1), keep_ref=False)
    g, t = {"student": gs, "teacher": gt}, {"teacher": pt}
    outs = []
    for chunk in (None, 2):
        spec = steps.DistillSpec(opd, opd.config_cls(), _sampler(), chunk_size=chunk)
        ro = steps.rollout_step(g, spec, state, t, _batch(), jax.random.key(0))
        outs.append(steps.score_step(g, spec, state, t, _batch(), ro))
    np.testing.assert_allclose(
        outs[0]["logp_priv_teacher_BT"], outs[1]["logp_priv_teacher_BT"], rtol=1e-6, atol=1e-6
    )


# ---------------------------------------------------------------- method configs


def test_importance_weight_without_truncation_and_is_clip_needs_it():
    opd = get_method("opd")
    cfg = opd.make_config({"importance_weight": True})
    rng = np.random.default_rng(0)
    s, t = (jnp.asarray(rng.normal(size=(2, 5, V)), jnp.float32) for _ in range(2))
    ro = rollout_lib.Rollout(
        jnp.zeros((2, 3), jnp.int32),
        jnp.ones((2, 3), bool),
        jnp.asarray(rng.integers(0, V, size=(2, 5)), jnp.int32),
        jnp.ones((2, 5), bool),
        jnp.full((2, 5), -3.0),
        jnp.zeros(2, bool),
    )
    _, metrics = opd.loss(s, {"teacher": t}, ro, cfg)
    assert "is_weight_mean" in metrics and "is_zeroed_frac" not in metrics
    with pytest.raises(ValueError, match="importance_weight=True"):
        opd.make_config({"is_clip": (0.5, 2.0)})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['nope'\]"):
        opd.make_config({"nope": 1})


def test_variants_get_labels_and_unknown_fields_are_named():
    c = config_lib.base_config()
    assert specs.run_spec(c, "dopd_hs_teacher").label == "DOPD hs_target=teacher"
    assert specs.run_spec(c, "dopd_frozen").config.priv_student == "frozen"
    assert specs.run_spec(c, "dopd").config.top_k == 16  # config.method_args.dopd
    with c.unlocked():
        c.distill.variants.bad = {"method": "opd", "hs_target": "teacher"}
    with pytest.raises(ValueError, match="'hs_target' is neither a field of OPDConfig"):
        specs.run_spec(c, "bad")


def test_cli_names_an_override_of_a_missing_field():
    from dopd_jax.run import unknown_override

    module = "experiments/mopd_domains.py:smoke"
    ok = ["run", "--config", module, "--config.distill.lr=1e-4", "--config.task.domain=arith"]
    assert unknown_override(ok) is None
    error = unknown_override(["run", f"--config={module}", "--config.distill.nope=1"])
    assert error.startswith("--config.distill.nope: config.distill has no field 'nope'")
    error = unknown_override(["run", "--config", module, "--config.distill.variants.mix_rl.lr=1"])
    assert "config.distill.variants.mix_rl has no field 'lr'" in error
    assert "holds only the fields its module set" in error


def test_method_import_paths(tmp_path, monkeypatch):
    (tmp_path / "user_methods.py").write_text(
        "from dopd_jax.methods import OPD\nimport dataclasses\n"
        "MINE = dataclasses.replace(OPD, name='mine', label='mine')\nNOT_A_METHOD = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_method("user_methods:MINE").name == "mine"
    for path, message in (
        ("user_methods:NOPE", "has no attribute 'NOPE'"),
        ("no_such_mod:X", "cannot import module 'no_such_mod'"),
        ("user_methods:NOT_A_METHOD", "not a dopd_jax.methods.Method"),
        (":X", "must look like"),
    ):
        with pytest.raises(ValueError, match=message):
            get_method(path)
    sys.modules.pop("user_methods", None)
    with pytest.raises(ValueError, match="already registered"):
        methods.register(dataclasses.replace(methods.OPD, label="other"))


# ---------------------------------------------------------------- optimizer and host loop


def _first_update(warmup, weight_decay=0.0, grad=1.0):
    opt = loop.make_optimizer(
        1e-2, warmup, 10, weight_decay=weight_decay, end_lr_fraction=0.1, clip_norm=1.0
    )
    params = {"w": jnp.ones(3)}
    updates, _ = opt.update({"w": jnp.full(3, grad)}, opt.init(params), params)
    return float(jnp.abs(updates["w"]).max())


def test_optimizer_warmup_zero_decay_and_schedule_are_explicit():
    assert _first_update(0) > 1e-3  # no warm-up: the first update uses the full lr
    assert _first_update(5) == 0.0  # warm-up starts from 0
    assert _first_update(0, weight_decay=0.0, grad=0.0) == 0.0
    assert _first_update(0, weight_decay=0.1, grad=0.0) > 0.0  # AdamW decay moves weights


class _FakeFns:
    """Stand-in jitted phases: counts steps, returns finite metrics."""

    def rollout(self, state, teachers, batch, key):
        return jnp.zeros(())

    def score(self, state, teachers, batch, ro):
        return {}

    def update(self, state, ro, targets):
        return state + 1, {"loss": jnp.float32(1.0), "num_tokens": jnp.float32(8.0)}


def test_eval_steps_are_logged_even_off_the_log_grid():
    written, evaluated = [], []
    hooks = loop.LoopHooks(
        write=lambda s, m: written.append(s),
        log_every=4,
        eval_every=3,
        evaluate=lambda step, state: evaluated.append(step) or {"eval_acc": 0},
    )
    batches = iter([([], None)] * 10)
    final = loop.run_distill(_FakeFns(), jnp.int32(0), {}, batches, 10, None, hooks)
    assert int(final) == 10
    assert evaluated == [3, 6, 9] and written == [3, 4, 6, 8, 9, 10]


class _DriftingFns(_FakeFns):
    """Like _FakeFns, with an HS share that grows by 0.1 per step."""

    def update(self, state, ro, targets):
        metrics = {"loss": jnp.float32(1.0), "num_tokens": jnp.float32(8.0)}
        return state + 1, dict(metrics, frac_HS=0.1 * (state + 1).astype(jnp.float32))


def test_early_stop_checkpoints_and_ends_the_run_with_a_reason():
    from dopd_jax.trainer.early_stop import EarlyStop

    stopper = EarlyStop(hs_frac=0.45, patience=2)
    saved, warned = [], []
    hooks = loop.LoopHooks(
        log_every=1,
        checkpoint=lambda step, state: saved.append(step),
        early_stop=stopper.update,
        warn=warned.append,
    )
    batches = iter([([], None)] * 10)
    final = loop.run_distill(_DriftingFns(), jnp.int32(0), {}, batches, 10, None, hooks)
    # HS > 45% first at step 5, and again at step 6: stop after 6 with a checkpoint
    assert int(final) == 6 and saved == [6]
    assert stopper.stopped["step"] == 6 and "HS share 60% > 45%" in stopper.stopped["reason"]
    assert "early stop after step 6" in warned[-1]
    restored = EarlyStop(hs_frac=0.45, patience=2).restore(stopper.state())
    assert restored.update(7, {"frac_HS": 0.0}) == stopper.stopped["reason"]  # stays stopped


@pytest.mark.parametrize(
    "kw,records,reason",
    [
        ({"min_entropy": 0.5, "patience": 1}, [{"student_entropy": 0.4}], "entropy 0.4 < 0.5"),
        ({"a_bar_rise": 2}, [{"A_bar": 1.0}, {"A_bar": 1.5}, {"A_bar": 2.0}], "A_bar rose"),
        (
            {"length_drift": 0.9, "patience": 1, "max_new_tokens": 10},
            [{"response_len": 9.5}],
            "response length 9.5 >= 9.0",
        ),
    ],
)
def test_early_stop_conditions(kw, records, reason):
    from dopd_jax.trainer.early_stop import EarlyStop

    stopper = EarlyStop(**kw)
    out = [stopper.update(i, m) for i, m in enumerate(records)]
    assert out[:-1] == [None] * (len(records) - 1) and reason in out[-1]
    assert EarlyStop().update(0, records[-1]) is None  # every condition is off by default


class _LeanFns(_FakeFns):
    """_FakeFns with lean phases that record the steps they ran."""

    def __init__(self):
        self.lean_steps = []

    def phase_fns(self, log):
        if log:
            return self.score, self.update

        def lean_update(state, ro, targets):
            self.lean_steps.append(int(state) + 1)
            return state + 1, {}

        return self.score, lean_update


def test_unlogged_steps_run_the_lean_phases():
    written = []
    hooks = loop.LoopHooks(write=lambda s, m: written.append(s), log_every=4)
    fns = _LeanFns()
    final = loop.run_distill(fns, jnp.int32(0), {}, iter([([], None)] * 10), 10, None, hooks)
    assert int(final) == 10 and written == [4, 8, 10]
    assert fns.lean_steps == [1, 2, 3, 5, 6, 7, 9]
