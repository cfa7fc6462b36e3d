"""Hugging Face ``config.json`` <-> ``ModelConfig`` for Qwen3 and Llama models.

Supported families: ``qwen3`` (QK-norm), ``llama`` and ``mistral`` (no
QK-norm). Anything that would change the math and that ``Transformer`` does
not implement (RoPE scaling, attention or MLP biases, sliding windows, other
activations, quantization) raises a ValueError naming the key; settings that
cannot change the logits (dropout, ``max_position_embeddings`` under plain
RoPE, token ids) are ignored.
"""

from __future__ import annotations

from typing import Any

from dopd_jax.models.transformer import ModelConfig

_SUPPORTED = ("qwen3", "llama", "mistral")
# float16 is widened to float32 (exact); the model has no float16 mode.
_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float32"}
_ROPE_KEYS = {"rope_theta", "rope_type", "type"}


def _get(hf: dict, key: str, default: Any = KeyError) -> Any:
    value = hf.get(key)
    if value is None:
        if default is KeyError:
            raise ValueError(f"config.json: required key {key!r} is missing")
        return default
    return value


def _rope_theta(hf: dict) -> float:
    """The RoPE base; raises unless the RoPE variant is the plain one."""
    where = "rope_parameters"
    params = hf.get(where)
    if params is None:  # transformers < 5: rope_theta + rope_scaling
        where = "rope_scaling"
        params = hf.get(where) or {}
        if isinstance(params, dict):
            params = dict(params, rope_theta=hf.get("rope_theta"))
    if not isinstance(params, dict):
        raise ValueError(f"config.json: {where} must be a dict, got {params!r}")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ValueError(
            f"config.json: {where} type {kind!r} is not supported "
            "(only plain RoPE, 'default', is implemented)"
        )
    extra = sorted(set(params) - _ROPE_KEYS)
    if extra:
        raise ValueError(f"config.json: {where} keys {extra} are not supported")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(
            f"config.json: partial_rotary_factor={hf['partial_rotary_factor']} is not supported"
        )
    theta = params.get("rope_theta", hf.get("rope_theta"))
    return float(10000.0 if theta is None else theta)


def _check_no_sliding_window(hf: dict) -> None:
    layer_types = hf.get("layer_types") or []
    other = sorted(set(layer_types) - {"full_attention"})
    if other:
        raise ValueError(
            f"config.json: layer_types {other} are not supported (only full_attention)"
        )
    model_type = hf.get("model_type")
    if model_type == "qwen3" and hf.get("use_sliding_window"):
        raise ValueError("config.json: use_sliding_window=true is not supported")
    window = hf.get("sliding_window")
    # Llama ignores the key; a window at least as long as any sequence never
    # masks anything.
    if (
        model_type == "mistral"
        and window is not None
        and window < (hf.get("max_position_embeddings") or float("inf"))
    ):
        raise ValueError(f"config.json: sliding_window={window} is not supported (set it to null)")


def _check_supported(hf: dict) -> None:
    model_type = hf.get("model_type")
    if model_type not in _SUPPORTED:
        raise ValueError(f"config.json: model_type={model_type!r} is not one of {_SUPPORTED}")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ValueError(f"config.json: {key}=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(
            f"config.json: hidden_act={hf['hidden_act']!r} is not supported (only 'silu')"
        )
    for key in ("quantization_config", "rope_interleaved"):
        if hf.get(key):
            raise ValueError(f"config.json: {key} is not supported")
    _check_no_sliding_window(hf)


def _dtype_name(hf: dict) -> str:
    name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if name not in _DTYPE_NAMES:
        raise ValueError(f"config.json: dtype={name!r} is not one of {sorted(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[name]


def config_from_hf(hf_config: dict) -> ModelConfig:
    """Maps a Hugging Face Qwen3/Llama/Mistral config dict to a ModelConfig.

    Args:
      hf_config: the parsed ``config.json``.

    Returns:
      A validated ModelConfig; ``param_dtype`` and ``dtype`` are both the
      checkpoint's dtype (float16 is widened to float32).
    """
    _check_supported(hf_config)
    qwen3 = hf_config["model_type"] == "qwen3"
    d_model = int(_get(hf_config, "hidden_size"))
    n_heads = int(_get(hf_config, "num_attention_heads"))
    # Qwen3Config defaults head_dim to 128, Llama to d_model // n_heads: the
    # two disagree, so a Qwen3 config must say it.
    head_dim = (
        _get(hf_config, "head_dim") if qwen3 else _get(hf_config, "head_dim", d_model // n_heads)
    )
    dtype = _dtype_name(hf_config)
    cfg = ModelConfig(
        vocab_size=int(_get(hf_config, "vocab_size")),
        d_model=d_model,
        n_layers=int(_get(hf_config, "num_hidden_layers")),
        n_heads=n_heads,
        n_kv_heads=int(_get(hf_config, "num_key_value_heads", n_heads)),
        head_dim=int(head_dim),
        d_ff=int(_get(hf_config, "intermediate_size")),
        rope_theta=_rope_theta(hf_config),
        qk_norm=qwen3,
        tie_embeddings=bool(_get(hf_config, "tie_word_embeddings", False)),
        norm_eps=float(_get(hf_config, "rms_norm_eps")),
        param_dtype=dtype,
        dtype=dtype,
    )
    cfg.validate()
    return cfg


def config_to_hf(cfg: ModelConfig) -> dict:
    """The ``config.json`` dict of a ModelConfig (qwen3 if qk_norm, else llama).

    Args:
      cfg: model config.

    Returns:
      A dict that ``transformers.AutoConfig`` reads back to the same model and
      that ``config_from_hf`` maps back to ``cfg`` (with ``dtype`` set to the
      param dtype).
    """
    cfg.validate()
    qwen3 = cfg.qk_norm
    hf = {
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen3 else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.d_ff,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "dtype": cfg.param_dtype,
        "max_position_embeddings": 32768,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if qwen3:
        hf.update(
            use_sliding_window=False,
            sliding_window=None,
            layer_types=["full_attention"] * cfg.n_layers,
        )
    else:
        hf.update(mlp_bias=False)
    return hf
