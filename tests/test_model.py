"""Tests of the transformer: shapes, masking, KV cache, NumPy reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dopd_jax.models import ModelConfig, Transformer, default_positions, init_cache, layers

BASE = ModelConfig(
    vocab_size=37,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    d_ff=48,
    qk_norm=True,
)


# Jitted entry points: compiling a whole forward is much cheaper on CPU than
# compiling each eager op for every new shape.
_fwd = nnx.jit(Transformer.__call__)
_decode = nnx.jit(Transformer.decode)


def _model(cfg=BASE, seed=0):
    return Transformer(cfg, rngs=nnx.Rngs(seed))


def _tokens(b, l, seed=1, vocab=BASE.vocab_size):
    return jax.random.randint(jax.random.key(seed), (b, l), 0, vocab, jnp.int32)


def _rms(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope_ref(x, pos, theta):
    """Hugging Face Llama rotate_half rotary embedding, x [T, N, E]."""
    e = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, e, 2) / e)
    ang = np.concatenate([pos[:, None] * inv] * 2, -1)[:, None, :]
    rot = np.concatenate([-x[..., e // 2 :], x[..., : e // 2]], -1)
    return x * np.cos(ang) + rot * np.sin(ang)


def _reference_forward(cfg, params, tokens):
    """NumPy forward of one unpadded row, written from the HF Llama/Qwen3 code."""
    p = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
    t, r = len(tokens), cfg.n_heads // cfg.n_kv_heads
    x = p["embed"]["embedding"][tokens]
    pos = np.arange(t, dtype=np.float64)
    for i in range(cfg.n_layers):
        lp = p["layers"][i]
        a = lp["attn"]
        h = _rms(x, lp["input_norm"]["scale"], cfg.norm_eps)
        q = (h @ a["q_proj"]["kernel"]).reshape(t, cfg.n_heads, cfg.head_dim)
        k = (h @ a["k_proj"]["kernel"]).reshape(t, cfg.n_kv_heads, cfg.head_dim)
        v = (h @ a["v_proj"]["kernel"]).reshape(t, cfg.n_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q = _rms(q, a["q_norm"]["scale"], cfg.norm_eps)
            k = _rms(k, a["k_norm"]["scale"], cfg.norm_eps)
        q, k = _rope_ref(q, pos, cfg.rope_theta), _rope_ref(k, pos, cfg.rope_theta)
        k, v = np.repeat(k, r, axis=1), np.repeat(v, r, axis=1)  # HF repeat_kv
        s = np.einsum("qhe,khe->hqk", q, k) / np.sqrt(cfg.head_dim)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khe->qhe", w, v).reshape(t, -1) @ a["o_proj"]["kernel"]
        m = lp["mlp"]
        h = _rms(x, lp["post_attn_norm"]["scale"], cfg.norm_eps)
        g = h @ m["gate_proj"]["kernel"]
        x = x + (g / (1 + np.exp(-g)) * (h @ m["up_proj"]["kernel"])) @ m["down_proj"]["kernel"]
    x = _rms(x, p["final_norm"]["scale"], cfg.norm_eps)
    if cfg.tie_embeddings:
        return x @ p["embed"]["embedding"].T
    return x @ p["lm_head"]["kernel"]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(qk_norm=False, tie_embeddings=False),
        dict(n_kv_heads=1, rope_theta=500.0),
        dict(n_kv_heads=4),
    ],
)
def test_matches_numpy_reference(overrides):
    cfg = dataclasses.replace(BASE, **overrides)
    model = _model(cfg)
    tokens = _tokens(1, 9)
    ref = _reference_forward(cfg, nnx.state(model, nnx.Param), np.asarray(tokens[0]))
    np.testing.assert_allclose(_fwd(model, tokens)[0], ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("tie,qk_norm", [(True, True), (False, False)])
def test_param_tree_names_and_kernel_layout(tie, qk_norm):
    cfg = dataclasses.replace(BASE, tie_embeddings=tie, qk_norm=qk_norm)
    p = nnx.to_pure_dict(nnx.state(_model(cfg), nnx.Param))
    assert ("lm_head" in p) is not tie
    assert ("q_norm" in p["layers"][0]["attn"]) is qk_norm
    assert p["layers"][1]["attn"]["k_proj"]["kernel"].shape == (32, 2 * 8)
    assert p["layers"][1]["mlp"]["down_proj"]["kernel"].shape == (48, 32)
    if not tie:
        assert p["lm_head"]["kernel"].shape == (32, 37)


@pytest.mark.parametrize(
    "param_dtype,dtype", [("float32", "float32"), ("bfloat16", "bfloat16"), ("float32", "bfloat16")]
)
def test_shapes_and_dtypes(param_dtype, dtype):
    cfg = dataclasses.replace(BASE, param_dtype=param_dtype, dtype=dtype)
    model = _model(cfg)
    logits = _fwd(model, _tokens(2, 5))
    assert logits.shape == (2, 5, cfg.vocab_size)
    assert logits.dtype == jnp.dtype(dtype)
    assert bool(jnp.all(jnp.isfinite(logits.astype(jnp.float32))))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {l.dtype for l in leaves} == {jnp.dtype(param_dtype)}
    # Same weights in float32: low precision must only perturb the logits.
    ref_model = _model()
    nnx.update(
        ref_model, jax.tree.map(lambda x: x.astype(jnp.float32), nnx.state(model, nnx.Param))
    )
    np.testing.assert_allclose(logits.astype(jnp.float32), _fwd(ref_model, _tokens(2, 5)), atol=0.1)


def test_causal_masking():
    model = _model()
    tokens = _tokens(2, 8)
    changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % BASE.vocab_size)
    a, b = _fwd(model, tokens), _fwd(model, changed)
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert float(jnp.abs(a[:, 5:] - b[:, 5:]).max()) > 1e-3


def test_left_padding_invariance():
    model = _model()
    row = _tokens(1, 6)
    padded = jnp.concatenate([jnp.full((1, 3), 7, jnp.int32), row], axis=1)
    mask = jnp.arange(9)[None] >= 3
    out = _fwd(model, padded, positions_BL=default_positions(mask), mask_BL=mask)
    np.testing.assert_allclose(out[:, 3:], _fwd(model, row), atol=1e-5)


def test_kv_cache_prefill_and_steps_match_full_forward():
    model = _model()
    tokens = _tokens(3, 10)
    mask = jnp.arange(10)[None] >= jnp.array([[0], [2], [5]])  # left padding
    positions = default_positions(mask)
    full = _fwd(model, tokens, positions_BL=positions, mask_BL=mask)
    cache = init_cache(BASE, 3, 10)
    logits, cache = _decode(model, tokens[:, :6], positions[:, :6], cache, mask[:, :6])
    steps = [logits]
    for i in range(6, 10):
        logits, cache = _decode(
            model, tokens[:, i : i + 1], positions[:, i : i + 1], cache, mask[:, i : i + 1]
        )
        steps.append(logits)
    assert int(cache.index) == 10
    decoded = jnp.concatenate(steps, axis=1)
    np.testing.assert_allclose(decoded[mask], full[mask], atol=1e-5, rtol=1e-5)


def test_prefill_last_only_projects_just_the_last_position():
    model = _model()
    tokens = _tokens(3, 7)
    mask = jnp.arange(7)[None] >= jnp.array([[0], [2], [4]])
    positions = default_positions(mask)
    full, cache_full = model.decode(tokens, positions, init_cache(BASE, 3, 7), mask)
    last, cache_last = model.decode(tokens, positions, init_cache(BASE, 3, 7), mask, last_only=True)
    assert last.shape == (3, 1, BASE.vocab_size)
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(cache_last.k_BGSE[0], cache_full.k_BGSE[0])


def test_split_merge_roundtrip_under_jit():
    model = _model()
    graphdef, params = nnx.split(model)
    tokens = _tokens(2, 7)
    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
    np.testing.assert_allclose(forward(params, tokens), _fwd(model, tokens), atol=1e-5)
    restored = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))
    np.testing.assert_array_equal(_fwd(restored, tokens), _fwd(model, tokens))


def test_rope_matches_reference():
    x = jax.random.normal(jax.random.key(3), (1, 5, 2, 8))
    pos = jnp.array([[0, 1, 2, 7, 40]])
    out = layers.apply_rope(x, pos, 1e4)
    ref = _rope_ref(np.asarray(x[0], np.float64), np.asarray(pos[0], np.float64), 1e4)
    np.testing.assert_allclose(out[0], ref, atol=1e-5)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(n_kv_heads=3), "multiple of n_kv_heads"),
        (dict(d_model=0), "d_model"),
        (dict(head_dim=7), "even"),
        (dict(dtype="float64"), "dtype"),
        (dict(param_dtype="fp8"), "param_dtype"),
        (dict(norm_eps=0.0), "norm_eps"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        Transformer(dataclasses.replace(BASE, **overrides), rngs=nnx.Rngs(0))
