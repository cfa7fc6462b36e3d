"""Hugging Face import/export against transformers on tiny random checkpoints.

Logit parity uses the relative error max|ours - hf| / max|hf| over the whole
[B, L, V] array (robust near zero logits), bounded by 1e-4 in float32.
"""

import dataclasses
import functools
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the model hub
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # pylint: disable=g-import-not-at-top,g-bad-import-order
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from dopd_jax.models import ModelConfig, Transformer, config_from_hf, hf, load_hf, save_hf
from dopd_jax.models.hf_config import config_to_hf
from dopd_jax.steps import rollout

VOCAB = 96
_HF_CLASSES = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
}
_fwd = nnx.jit(Transformer.__call__)


def _rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _tokens(b=2, l=7, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (b, l), np.int64)


def _hf_model(kind, *, kv_heads=2, tied=False, seed=0):
    """A tiny HF model with every weight random (norm scales too)."""
    config_cls, model_cls = (getattr(transformers, n) for n in _HF_CLASSES[kind])
    extra = dict(sliding_window=None) if kind == "mistral" else {}
    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=8,
        intermediate_size=64,
        rope_theta=5000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **extra,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


@functools.cache
def _checkpoint(tmp_root, kind, kv_heads, tied, shard=False):
    """Saves a tiny HF model once per setting; returns (path, model)."""
    model = _hf_model(kind, kv_heads=kv_heads, tied=tied)
    path = os.path.join(tmp_root, f"{kind}_{kv_heads}_{tied}_{shard}")
    model.save_pretrained(
        path, safe_serialization=True, **(dict(max_shard_size="20KB") if shard else {})
    )
    return path, model


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf"))


@pytest.mark.parametrize(
    "kind,kv_heads,tied,shard",
    [
        ("qwen3", 2, False, False),
        ("qwen3", 4, True, False),
        ("llama", 2, True, False),
        ("llama", 4, False, True),
        ("mistral", 2, False, False),
    ],
)
def test_logits_match_transformers(root, kind, kv_heads, tied, shard):
    path, hf_model = _checkpoint(root, kind, kv_heads, tied, shard)
    assert os.path.exists(os.path.join(path, hf._INDEX)) is shard
    model = load_hf(path)
    assert model.cfg.qk_norm is (kind == "qwen3")
    assert model.cfg.tie_embeddings is tied and model.cfg.rope_theta == 5000.0
    tokens = _tokens()
    logits = _fwd(model, jnp.asarray(tokens, jnp.int32))
    assert logits.shape == (2, 7, VOCAB)
    assert _rel_err(logits, _hf_logits(hf_model, tokens)) <= 1e-4


def _hf_greedy(hf_model, prompt, new, **kw):
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor(prompt),
            max_new_tokens=new,
            do_sample=False,
            attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            **kw,
        )
    return out[:, prompt.shape[1] :].numpy()


def test_greedy_continuation_matches_generate(root):
    path, hf_model = _checkpoint(root, "qwen3", 2, False)
    prompt, new = _tokens(2, 5, seed=3), 12
    free = _hf_greedy(hf_model, prompt, new)
    # EOS = row 0's 8th token, so row 0 stops early and row 1 (maybe) not.
    eos = int(free[0, 7])
    pad = max(set(range(VOCAB)) - set(free.ravel().tolist()))
    hf_new = _hf_greedy(hf_model, prompt, new, eos_token_id=eos, pad_token_id=pad)
    assert eos in hf_new[0]
    graphdef, params = nnx.split(load_hf(path))
    scfg = rollout.SamplerConfig(max_new_tokens=new, eos_id=eos, pad_id=pad, greedy=True)
    sample = jax.jit(functools.partial(rollout.sample, graphdef, cfg=scfg))
    ro = sample(params, prompt.astype(np.int32), np.ones(prompt.shape, bool), jax.random.key(0))
    ours = np.asarray(ro.tokens_BT)
    np.testing.assert_array_equal(ours[:, : hf_new.shape[1]], hf_new)
    assert np.all(ours[:, hf_new.shape[1] :] == pad)


def test_bfloat16_checkpoint(root):
    hf_model = _hf_model("llama", tied=False).to(torch.bfloat16)
    path = os.path.join(root, "bf16")
    hf_model.save_pretrained(path, safe_serialization=True)
    model = load_hf(path)
    assert (model.cfg.param_dtype, model.cfg.dtype) == ("bfloat16", "bfloat16")
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
    ref = hf_model.model.layers[1].self_attn.k_proj.weight.detach().float().numpy()
    np.testing.assert_array_equal(
        np.asarray(model.layers[1].attn.k_proj.kernel[...], np.float32), ref.T
    )
    tokens = _tokens()
    # Both sides compute in bfloat16, with different op orders.
    logits = _fwd(model, jnp.asarray(tokens, jnp.int32))
    assert _rel_err(logits, _hf_logits(hf_model, tokens)) <= 5e-2
    f32 = load_hf(path, param_dtype="float32", dtype=jnp.float32)
    # Reloaded rather than hf_model.float(): .to() rounded its RoPE buffer.
    exact = _hf_logits(
        transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, local_files_only=True
        ),
        tokens,
    )
    assert _rel_err(_fwd(f32, jnp.asarray(tokens, jnp.int32)), exact) <= 1e-4


@functools.cache
def _our_model(qk_norm, tied, seed=1):
    """A random float32 Transformer (cached: tests must not mutate it)."""
    cfg = ModelConfig(
        vocab_size=VOCAB,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        d_ff=48,
        rope_theta=3000.0,
        qk_norm=qk_norm,
        tie_embeddings=tied,
        norm_eps=1e-5,
    )
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    # Random norm scales, so swapped norms cannot pass unnoticed.
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    nnx.update(
        model,
        jax.tree.map_with_path(
            lambda p, x: x + jax.random.uniform(next(keys), x.shape, x.dtype, -0.5, 0.5)
            if p[-1].key == "scale"
            else x,
            pure,
        ),
    )
    assert float(model.final_norm.scale[...].std()) > 0.05
    return cfg, model


@pytest.mark.parametrize("qk_norm,tied", [(True, True), (False, False)])
def test_save_hf_roundtrip(tmp_path, qk_norm, tied):
    cfg, model = _our_model(qk_norm, tied)
    assert config_from_hf(config_to_hf(cfg)) == cfg
    save_hf(model, cfg, str(tmp_path))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), local_files_only=True
    ).eval()
    assert type(hf_model).__name__ == _HF_CLASSES["qwen3" if qk_norm else "llama"][1]
    tokens = _tokens(seed=2)
    ours = _fwd(model, jnp.asarray(tokens, jnp.int32))
    assert _rel_err(ours, _hf_logits(hf_model, tokens)) <= 1e-4
    back = load_hf(str(tmp_path))
    assert back.cfg == cfg
    jax.tree.map(
        np.testing.assert_array_equal, nnx.state(back, nnx.Param), nnx.state(model, nnx.Param)
    )


def test_save_hf_bfloat16_params_from_state(tmp_path):
    cfg, model = _our_model(True, True)
    cfg = dataclasses.replace(cfg, param_dtype="bfloat16")
    state = jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(model, nnx.Param))
    save_hf(state, cfg, str(tmp_path))
    header = hf.read_safetensors_header(str(tmp_path / hf._SINGLE))
    assert {t.dtype for t in header.values()} == {"BF16"}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), local_files_only=True
    )
    assert hf_model.dtype == torch.bfloat16


def test_shardings_hook_places_each_param(tmp_path):
    cfg, model = _our_model(True, True)
    save_hf(model, cfg, str(tmp_path))
    mesh = jax.make_mesh((8,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    calls = {}

    def shardings(path, shape):
        calls[path] = shape
        spec = jax.P(None, "model") if shape[-1] % 8 == 0 and len(shape) == 2 else jax.P()
        return jax.sharding.NamedSharding(mesh, spec)

    loaded = load_hf(str(tmp_path), shardings=shardings)
    assert calls[("layers", "1", "attn", "q_proj", "kernel")] == (32, 32)
    assert len(calls) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    kernel = loaded.layers[0].mlp.up_proj.kernel[...]
    assert kernel.sharding.spec == jax.P(None, "model")
    assert len(kernel.addressable_shards) == 8
    tokens = jnp.asarray(_tokens(seed=4), jnp.int32)
    assert _rel_err(_fwd(loaded, tokens), _fwd(model, tokens)) <= 1e-6


def test_mesh_loads_into_rule_shardings(tmp_path):
    from dopd_jax import sharding

    cfg, model = _our_model(True, True)
    save_hf(model, cfg, str(tmp_path))
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    loaded = load_hf(str(tmp_path), mesh=mesh)
    expected = sharding.param_shardings(nnx.state(loaded, nnx.Param), mesh)
    got = jax.tree.map(lambda x: x.sharding, nnx.state(loaded, nnx.Param))
    assert jax.tree.leaves(got) == jax.tree.leaves(expected)
    assert any(len(s.spec) and any(s.spec) for s in jax.tree.leaves(got))  # really sharded
    tokens = jnp.asarray(_tokens(seed=4), jnp.int32)
    assert _rel_err(_fwd(loaded, tokens), _fwd(model, tokens)) <= 1e-6
    with pytest.raises(ValueError, match="either shardings or mesh"):
        load_hf(str(tmp_path), mesh=mesh, shardings=lambda p, s: None)


@pytest.fixture(name="saved")
def _saved(tmp_path):
    cfg, model = _our_model(False, False)
    save_hf(model, cfg, str(tmp_path))
    return tmp_path


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _edit_tensors(path, fn):
    file = str(path / hf._SINGLE)
    tensors = load_file(file)
    fn(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda t: t.pop("model.norm.weight"), "'model.norm.weight' is missing"),
        (
            lambda t: t.update(
                {"model.layers.0.mlp.up_proj.weight": np.zeros((48, 31), np.float32)}
            ),
            "up_proj.weight.*shape \\(48, 31\\)",
        ),
        (lambda t: t.update(extra=np.zeros(2, np.float32)), "unexpected tensor 'extra'"),
        (lambda t: t.update({"model.norm.weight": np.zeros(32, np.int32)}), "dtype I32"),
    ],
)
def test_bad_tensors_raise(saved, edit, match):
    _edit_tensors(saved, edit)
    with pytest.raises(ValueError, match=match) as err:
        load_hf(str(saved))
    assert hf._SINGLE in str(err.value)


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(vocab_size=VOCAB + 1), "model.embed_tokens.weight.*model.safetensors"),
        (
            dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
            "rope_parameters type 'llama3'",
        ),
        (
            dict(
                rope_parameters=None, rope_theta=1e4, rope_scaling={"type": "linear", "factor": 2.0}
            ),
            "rope_scaling",
        ),
        (dict(attention_bias=True), "attention_bias"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(model_type="gemma"), "model_type"),
        (dict(model_type="mistral", sliding_window=16), "sliding_window"),
        (dict(layer_types=["sliding_attention"] * 2), "layer_types"),
        (dict(model_type="qwen3", head_dim=None), "head_dim"),
        (dict(dtype="float8"), "dtype"),
    ],
)
def test_bad_config_raises(saved, changes, match):
    _edit_config(saved, **changes)
    with pytest.raises(ValueError, match=match):
        load_hf(str(saved))


def test_missing_files_raise(saved, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ValueError, match="config.json not found"):
        load_hf(str(empty))
    os.replace(saved / hf._SINGLE, saved / "model-00001-of-00001.safetensors")
    with pytest.raises(ValueError, match="neither model.safetensors"):
        load_hf(str(saved))
    (saved / hf._INDEX).write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(ValueError, match="shard model-00002-of-00002"):
        load_hf(str(saved))


def test_config_from_hf_defaults_and_mistral():
    base = dict(
        model_type="llama",
        vocab_size=10,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=8,
        rms_norm_eps=1e-5,
        rope_theta=500.0,
        torch_dtype="float16",
    )
    cfg = config_from_hf(base)
    assert (cfg.head_dim, cfg.n_kv_heads, cfg.rope_theta) == (8, 4, 500.0)
    assert (cfg.tie_embeddings, cfg.qk_norm, cfg.param_dtype) == (False, False, "float32")
    mistral = config_from_hf(dict(base, model_type="mistral", sliding_window=None))
    assert mistral == cfg
    with pytest.raises(ValueError, match="required key 'hidden_size'"):
        config_from_hf(dict(base, hidden_size=None))
