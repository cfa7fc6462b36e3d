"""Mixed precision: float32 master parameters with bfloat16 compute train like float32.

At lr 5e-6 an AdamW update (~5e-6 per weight) is far below bfloat16's spacing
near typical weights (~1.2e-4 at 0.02, 7.8e-3 at 1.0), so adding it to
bfloat16 parameters rounds it away: the naive update leaves almost every weight
where it was. Measured on this setup (10 steps): float32 master + bfloat16
compute differs from float32 training by 4% (relative L2 of the weight
change, cosine 0.999); the naive bfloat16-parameter update moves 1% of the
weights and its change is 99.5% off.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dopd_jax.data.batches import SFTBatch
from dopd_jax.methods import get_method
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.state import init_state
from dopd_jax.steps import DistillSpec, SamplerConfig, make_distill_fns, sft

CFG = ModelConfig(
    vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128
)
LR, STEPS, TOLERANCE = 5e-6, 10, 0.1


def _init_params():
    _, params = nnx.split(Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    return params


def _graphdef(param_dtype, dtype):
    cfg = dataclasses.replace(CFG, param_dtype=param_dtype, dtype=dtype)
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)[0]


def _batches(n, b=8, length=32):
    rng = np.random.default_rng(0)
    for _ in range(n):
        toks = rng.integers(0, CFG.vocab_size, (b, length + 1)).astype(np.int32)
        ones = np.ones((b, length), bool)
        yield SFTBatch(toks[:, :-1], toks[:, 1:], ones, ones)


def _weight_change(param_dtype, dtype):
    """Flat float32 weight change after ``STEPS`` AdamW steps at lr 5e-6."""
    start = jax.tree.map(lambda p: p.astype(param_dtype), _init_params())
    opt = optax.adamw(LR, weight_decay=0.0)
    state = init_state(start, opt, keep_ref=False)
    step = jax.jit(lambda s, b: sft.sft_step(_graphdef(param_dtype, dtype), opt, s, b))
    for batch in _batches(STEPS):
        state, _ = step(state, batch)
    leaves = jax.tree.leaves(
        jax.tree.map(lambda a, b: a.astype(jnp.float32) - b, state.params, start)
    )
    return np.concatenate([np.asarray(x).ravel() for x in leaves])


@pytest.fixture(scope="module")
def changes():
    return {
        "float32": _weight_change("float32", "float32"),
        "master": _weight_change("float32", "bfloat16"),
        "naive": _weight_change("bfloat16", "bfloat16"),
    }


def _relative_error(x, reference):
    return np.linalg.norm(x - reference) / np.linalg.norm(reference)


def test_float32_master_with_bfloat16_compute_moves_weights_like_float32(changes):
    ref = changes["float32"]
    assert np.mean(ref != 0) > 0.99
    assert np.mean(changes["master"] != 0) > 0.99
    assert _relative_error(changes["master"], ref) < TOLERANCE


def test_naive_bfloat16_parameter_update_is_lost(changes):
    assert np.mean(changes["naive"] != 0) < 0.05
    assert _relative_error(changes["naive"], changes["float32"]) > 0.9


def test_state_keeps_float32_master_and_optimizer_and_ema_reference():
    """The distillation update with bfloat16 compute keeps float32 params, moments and an
    EMA reference that moves (a bfloat16 EMA would stay put at decay 0.99)."""
    params = _init_params()
    graphdef = _graphdef("float32", "bfloat16")
    method = get_method("opsd")
    config = method.make_config({"priv_student": "ema"}, "test")
    spec = DistillSpec(
        method=method,
        config=config,
        sampler=SamplerConfig(max_new_tokens=6, eos_id=1, pad_id=0, n_samples=2),
        log_passes=(),
    )
    opt = optax.adamw(LR, weight_decay=0.0)
    state = init_state(params, opt, keep_ref=True)
    fns = make_distill_fns({"student": graphdef, "teacher": graphdef}, opt, spec)
    rng = np.random.default_rng(1)
    prompt = rng.integers(2, CFG.vocab_size, (4, 5)).astype(np.int32)
    priv = rng.integers(2, CFG.vocab_size, (4, 8)).astype(np.int32)
    from dopd_jax.data.batches import PromptBatch

    batch = PromptBatch(prompt, np.ones_like(prompt, bool), priv, np.ones_like(priv, bool))
    ref0 = jax.tree.map(jnp.copy, state.ref_params)
    for i in range(3):
        ro = fns.rollout(state, {"teacher": params}, batch, jax.random.key(i))
        targets = fns.score(state, {"teacher": params}, batch, ro)
        state, metrics = fns.update(state, ro, targets)
    dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.ref_params))}
    moments = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "ndim", 0) > 0]
    assert dtypes == {jnp.dtype("float32")}
    assert {x.dtype for x in moments} == {jnp.dtype("float32")}
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.mean(a != b), state.ref_params, ref0))
    assert np.mean([float(m) for m in moved]) > 0.9
