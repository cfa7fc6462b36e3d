"""Sharding on 8 simulated CPU devices: meshes, rules, sharded init, batch placement,
and step parity (one device vs 2x2x2 and 8x1x1 meshes), donation and recompile guards."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from dopd_jax import sharding, steps
from dopd_jax.methods import get_method
from dopd_jax.models import ModelConfig, Transformer
from dopd_jax.sharding import rules as sharding_rules
from dopd_jax.steps import rollout as rollout_lib

V = 24
CUBE = {"data": 2, "fsdp": 2, "tensor": 2}


def _cfg(d=16, vocab=V, **kw):
    return ModelConfig(
        vocab_size=vocab,
        d_model=d,
        n_layers=1,
        n_heads=2,
        n_kv_heads=2,
        head_dim=d // 2,
        d_ff=2 * d,
        qk_norm=True,
        **kw,
    )


def _abstract(cfg):
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[1]


def _flat(tree):
    return {
        jax.tree_util.keystr(k): v
        for k, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, P))[
            0
        ]
    }


def test_make_mesh_shapes_and_auto_axes():
    mesh = sharding.make_mesh(CUBE)
    assert dict(mesh.shape) == CUBE
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert dict(sharding.make_mesh({"data": -1, "tensor": 2}).shape) == {"data": 4, "tensor": 2}
    small = sharding.make_mesh({"fsdp": 2}, devices=jax.devices()[:2])
    assert small.devices.size == 2


@pytest.mark.parametrize(
    "shape,match",
    [
        ({"data": 3}, "does not match the 8 devices"),
        ({"data": 3, "tensor": -1}, "does not match the 8 devices"),
        ({"data": -1, "fsdp": -1}, "at most one -1"),
        ({"data": 0, "fsdp": 8}, "positive ints"),
        ({"model": 8}, "not used by the sharding rules"),
        ({}, "empty"),
    ],
)
def test_make_mesh_rejects_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh(shape)


def test_transformer_partition_specs():
    specs = _flat(sharding_rules.param_partition_specs(_abstract(_cfg(tie_embeddings=False)), CUBE))
    layer = "['layers'][0]"
    expected = {
        "['embed']['embedding']": P("tensor", "fsdp"),
        "['lm_head']['kernel']": P("fsdp", "tensor"),
        f"{layer}['attn']['q_proj']['kernel']": P("fsdp", "tensor"),
        f"{layer}['attn']['k_proj']['kernel']": P("fsdp", "tensor"),
        f"{layer}['attn']['o_proj']['kernel']": P("tensor", "fsdp"),
        f"{layer}['mlp']['up_proj']['kernel']": P("fsdp", "tensor"),
        f"{layer}['mlp']['down_proj']['kernel']": P("tensor", "fsdp"),
        f"{layer}['attn']['q_norm']['scale']": P(None),
        f"{layer}['input_norm']['scale']": P(None),
        "['final_norm']['scale']": P(None),
    }
    for path, spec in expected.items():
        assert specs[path + ".value"] == spec, path


def test_specs_fall_back_to_replication_when_not_divisible():
    specs = lambda cfg, sizes: _flat(sharding_rules.param_partition_specs(_abstract(cfg), sizes))
    up = "['layers'][0]['mlp']['up_proj']['kernel'].value"
    odd_vocab = specs(_cfg(vocab=25), CUBE)
    assert odd_vocab["['embed']['embedding'].value"] == P(None, "fsdp")  # 25 % 2 != 0
    assert odd_vocab[up] == P("fsdp", "tensor")
    assert specs(_cfg(d=12), {"fsdp": 8})[up] == P(None, None)  # 12 % 8 != 0, no tensor axis
    assert specs(_cfg(d=12), {"fsdp": 4})[up] == P("fsdp", None)
    with pytest.raises(ValueError, match="do not match shape"):
        sharding_rules.logical_to_spec(("embed",), (4, 4), CUBE)


def test_init_sharded_places_and_matches_unsharded_init():
    mesh = sharding.make_mesh(CUBE)
    cfg = _cfg()
    _, sharded = sharding.init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(3)), mesh)
    _, plain = nnx.split(Transformer(cfg, rngs=nnx.Rngs(3)))
    specs = _flat(sharding_rules.param_partition_specs(plain, mesh))
    for path, x in _flat(sharded).items():
        assert x.sharding.mesh == mesh and x.sharding.spec == specs[path], path
    table = sharded["embed"]["embedding"][...]
    assert table.addressable_shards[0].data.shape == (V // 2, 8)  # a quarter per device
    jax.tree.map(np.testing.assert_array_equal, sharded, plain)
    placed = _flat(sharding.shard_params(plain, mesh))
    assert all(placed[k].sharding == x.sharding for k, x in _flat(sharded).items())


def test_optimizer_state_follows_param_shardings():
    mesh = sharding.make_mesh(CUBE)
    _, params = sharding.init_sharded(lambda: Transformer(_cfg(), rngs=nnx.Rngs(0)), mesh)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    state = sharding.init_state_sharded(params, opt, mesh, keep_ref=True)
    q = lambda tree: tree["layers"][0]["attn"]["q_proj"]["kernel"][...]
    adam = state.opt_state[1][0]
    assert q(adam.mu).sharding.spec == q(adam.nu).sharding.spec == P("fsdp", "tensor")
    assert q(state.ref_params).sharding.spec == P("fsdp", "tensor")
    assert adam.count.sharding.spec == P() and state.step.sharding.spec == P()


def _sft_batch(rows):
    ids = np.random.default_rng(0).integers(4, V, size=(rows, 9)).astype(np.int32)
    return steps.SFTBatch(
        ids[:, :-1], ids[:, 1:], np.arange(8)[None].repeat(rows, 0) >= 3, np.ones((rows, 8), bool)
    )


def test_batch_placement_and_row_errors():
    mesh = sharding.make_mesh(CUBE)
    batch = sharding.shard_batch(_sft_batch(8), mesh)
    assert batch.inputs_BL.sharding.spec == P(("data", "fsdp"))
    assert {s.data.shape for s in batch.inputs_BL.addressable_shards} == {(2, 8)}
    local = sharding.host_local_to_global(_sft_batch(8), mesh)  # one process: all rows
    np.testing.assert_array_equal(local.targets_BL, batch.targets_BL)
    assert sharding.process_row_slice(mesh, 8) == slice(0, 8)
    with pytest.raises(ValueError, match=r"inputs_BL has 6 rows, not divisible by 4"):
        sharding.shard_batch(_sft_batch(6), mesh)
    with pytest.raises(ValueError, match="not divisible by 4"):
        sharding.process_row_slice(mesh, 6)


def test_step_shardings_reject_unknown_phase_and_missing_teacher():
    mesh = sharding.make_mesh(CUBE)
    _, params = nnx.split(Transformer(_cfg(), rngs=nnx.Rngs(0)))
    opt = optax.adam(1e-3)
    abstract = jax.eval_shape(lambda p: steps.init_state(p, opt, keep_ref=False), params)
    sh = sharding.step_shardings(mesh, opt, abstract)
    with pytest.raises(ValueError, match="unknown step phase 'sample'"):
        sh.jit_kwargs("sample")
    with pytest.raises(ValueError, match="needs teacher shardings"):
        sh.jit_kwargs("score")


def _distill_batch(seed, rows=8, p=5, q=8):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(4, V, size=(rows, p)).astype(np.int32)
    priv = rng.integers(4, V, size=(rows, q)).astype(np.int32)
    mask = np.arange(p)[None] >= rng.integers(0, p - 1, size=(rows, 1))  # left padding
    return steps.DistillBatch(prompt * mask, mask, priv, np.ones(priv.shape, bool))


class _CompileLog(logging.Handler):
    """Collects JAX's "Compiling ..." log lines (emitted under ``jax.log_compiles``)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        if "Compiling" in record.getMessage():
            self.messages.append(record.getMessage())


def _run(mesh_shape, n_distill=3):
    """SFT then DOPD steps (third batch new, same shapes); returns losses and params."""
    mesh = None if mesh_shape is None else sharding.make_mesh(mesh_shape)
    factory = lambda: Transformer(_cfg(), rngs=nnx.Rngs(0))
    gs, ps = nnx.split(factory()) if mesh is None else sharding.init_sharded(factory, mesh)
    gt, pt = nnx.split(Transformer(_cfg(24), rngs=nnx.Rngs(1)))
    opt = optax.adam(1e-2)
    state = steps.init_state(ps, opt, keep_ref=False)
    sh = None
    if mesh is not None:
        pt = sharding.shard_params(pt, mesh)
        state = sharding.init_state_sharded(ps, opt, mesh, keep_ref=False)
        sh = sharding.step_shardings(mesh, opt, state, {"teacher": pt})
    place = (lambda b: b) if mesh is None else (lambda b: sharding.shard_batch(b, mesh))
    out = {"sft": [], "distill": [], "frac_HS": []}
    sft_fn = steps.make_sft_fn(gs, opt, shardings=sh)
    for _ in range(2):
        state, m = sft_fn(state, place(_sft_batch(8)))
        out["sft"].append(float(m["loss"]))
    sampler = rollout_lib.SamplerConfig(max_new_tokens=5, eos_id=1, pad_id=0, n_samples=2)
    spec = steps.DistillSpec(
        get_method("dopd"),
        get_method("dopd").make_config({"top_k": 8}),
        sampler,
        log_passes=(),
        diag_top_k=8,
    )
    fns = steps.make_distill_fns({"student": gs, "teacher": gt}, opt, spec, shardings=sh)
    log = _CompileLog()
    logging.getLogger("jax").addHandler(log)
    try:
        for i in range(n_distill):
            with jax.log_compiles(i > 0):  # new data, same shapes: must not recompile
                batch = place(_distill_batch(i))
                ro = fns.rollout(state, {"teacher": pt}, batch, jax.random.key(7))
                old, (state, m) = (
                    state,
                    fns.update(state, ro, fns.score(state, {"teacher": pt}, batch, ro)),
                )
                out["distill"].append(float(m["loss"]))
                out["frac_HS"].append(float(m["frac_HS"]))
    finally:
        logging.getLogger("jax").removeHandler(log)
    out.update(
        params=jax.device_get(state.params), teacher=pt, old_state=old, compiles=log.messages
    )
    return out


@pytest.fixture(scope="module")
def reference():
    return _run(None)


@pytest.mark.parametrize(
    "mesh_shape", [CUBE, {"data": 8, "fsdp": 1, "tensor": 1}], ids=["2x2x2", "8x1x1"]
)
def test_sharded_steps_match_single_device(reference, mesh_shape):
    assert reference["compiles"] == [], reference["compiles"]
    got = _run(mesh_shape)
    for key in ("sft", "distill", "frac_HS"):
        np.testing.assert_allclose(got[key], reference[key], rtol=1e-4, atol=1e-6, err_msg=key)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        got["params"],
        reference["params"],
    )
    assert got["compiles"] == [], got["compiles"]  # no recompilation after step 1
    q = got["old_state"].params["layers"][0]["attn"]["q_proj"]["kernel"][...]
    assert q.is_deleted()  # the student state was donated ...
    teacher = jax.tree.leaves(got["teacher"])
    assert not any(x.is_deleted() for x in teacher)  # ... the teacher never is
    assert float(sum(jnp.sum(x) for x in teacher)) == pytest.approx(
        float(sum(jnp.sum(x) for x in jax.tree.leaves(reference["teacher"]))), rel=1e-5
    )
