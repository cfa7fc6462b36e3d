"""Load and save Hugging Face Qwen3/Llama checkpoints (config.json + safetensors).

``load_hf`` builds the ``Transformer`` abstractly (``nnx.eval_shape``, no
random init), checks every tensor's name, shape and dtype against it from
the safetensors headers alone, then reads one tensor at a time from a
memory map and places it with ``jax.device_put``. The host holds at most one
converted tensor at a time; with ``shardings`` each device receives only its
shards, so the full model never has to fit on one device.

The safetensors header is parsed here rather than through the
``safetensors`` package because its NumPy loader has no bfloat16 and its
Flax loader puts every tensor whole on the default device.

HF ``nn.Linear`` weights are ``[out, in]``; our kernels are ``[in, out]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from dopd_jax.models.hf_config import config_from_hf, config_to_hf
from dopd_jax.models.transformer import ModelConfig, Transformer
from dopd_jax.sharding import rules as sharding_rules

Shardings = Callable[[tuple[str, ...], tuple[int, ...]], jax.sharding.Sharding]

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": jnp.bfloat16,
}  # ml_dtypes type
_MODULE_NAMES = {
    "embed": "model.embed_tokens",
    "layers": "model.layers",
    "final_norm": "model.norm",
    "attn": "self_attn",
    "input_norm": "input_layernorm",
    "post_attn_norm": "post_attention_layernorm",
}
# Non-parameter buffers that old checkpoints carry and HF skips too.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
_SINGLE, _INDEX = "model.safetensors", "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """Where one tensor lies in a safetensors file (absolute byte offsets)."""

    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_safetensors_header(file: str) -> dict[str, _Tensor]:
    """Tensor locations of one ``.safetensors`` file, without reading data.

    Args:
      file: path of the file.

    Returns:
      Dict from tensor name to its dtype tag, shape and byte range.
    """
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0] if size >= 8 else size
        try:
            header = json.loads(f.read(n)) if 8 + n <= size else None
        except ValueError:
            header = None
    if not isinstance(header, dict):
        raise ValueError(f"{file}: not a safetensors file (bad header)")
    out = {}
    for name, info in header.items():
        if name != "__metadata__":
            out[name] = _tensor_info(file, name, info, 8 + n, size)
    return out


def _tensor_info(file, name, info, data_start, size) -> _Tensor:
    """Validated location of one header entry."""
    try:
        begin, end = (data_start + int(i) for i in info["data_offsets"])
        shape, tag = tuple(int(d) for d in info["shape"]), info["dtype"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{file}: bad header entry for {name!r}: {e}") from e
    itemsize = np.dtype(_ST_DTYPES[tag]).itemsize if tag in _ST_DTYPES else 0
    if end > size or (itemsize and end - begin != math.prod(shape) * itemsize):
        raise ValueError(
            f"{file}: byte range of tensor {name!r} does not match "
            f"its shape {shape} and dtype {tag}"
        )
    return _Tensor(file, tag, shape, begin, end)


def _read(t: _Tensor) -> np.ndarray:
    """A read-only memory-mapped view of one tensor."""
    return np.memmap(t.file, dtype=_ST_DTYPES[t.dtype], mode="r", offset=t.start, shape=t.shape)


def checkpoint_source(path: str) -> str:
    """``path/model.safetensors`` if present, else the sharded index file."""
    for name in (_SINGLE, _INDEX):
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    raise ValueError(f"{path}: neither {_SINGLE} nor {_INDEX} found")


def checkpoint_tensors(path: str) -> dict[str, _Tensor]:
    """All tensors of a checkpoint dir: ``model.safetensors`` or a sharded index.

    Args:
      path: checkpoint directory.

    Returns:
      Dict from tensor name to its location.
    """
    index_file = checkpoint_source(path)
    if index_file.endswith(_SINGLE):
        return read_safetensors_header(index_file)
    with open(index_file) as f:
        weight_map = json.load(f)["weight_map"]
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        shard_file = os.path.join(path, shard)
        if not os.path.exists(shard_file):
            raise ValueError(f"{index_file}: shard {shard} does not exist")
        tensors.update(read_safetensors_header(shard_file))
    for name, shard in weight_map.items():
        if name not in tensors or os.path.basename(tensors[name].file) != shard:
            raise ValueError(f"{index_file}: tensor {name!r} is not in {shard}")
    return tensors


def hf_name(path: tuple[str, ...]) -> str:
    """HF tensor name of a parameter path, e.g. ('final_norm', 'scale')."""
    parts = [_MODULE_NAMES.get(p, p) for p in path[:-1]]
    return ".".join(parts + ["weight"])


def abstract_params(cfg: ModelConfig):
    """(graphdef, [(path, abstract Param)]) without allocating any array."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    return graphdef, list(nnx.to_flat_state(state))


def _hf_shape(path, shape) -> tuple[int, ...]:
    return tuple(reversed(shape)) if path[-1] == "kernel" else tuple(shape)


def check_tensors(cfg, params, tensors, where: str) -> None:
    """Raises ValueError on a missing, unexpected or misshaped tensor."""
    expected = {hf_name(tuple(map(str, p))): _hf_shape(p, v.shape) for p, v in params}
    missing = sorted(expected.keys() - tensors.keys())
    if missing:
        raise ValueError(
            f"tensor {missing[0]!r} is missing from {where} ({len(missing)} missing in all)"
        )
    for name in sorted(tensors.keys() - expected.keys()):
        # A tied checkpoint may still store lm_head; HF overwrites it too.
        tied_head = name == "lm_head.weight" and cfg.tie_embeddings
        if not (tied_head or name.endswith(_IGNORED_SUFFIXES)):
            raise ValueError(f"unexpected tensor {name!r} in {tensors[name].file}")
    for name, shape in expected.items():
        t = tensors[name]
        if t.shape != shape:
            raise ValueError(
                f"tensor {name!r} in {t.file} has shape {t.shape}, "
                f"config.json implies {shape} ({cfg})"
            )
        if t.dtype not in _ST_DTYPES:
            raise ValueError(
                f"tensor {name!r} in {t.file} has dtype {t.dtype}, "
                f"expected one of {sorted(_ST_DTYPES)}"
            )


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name if not isinstance(dtype, str) else dtype


def rule_shardings(mesh) -> Shardings:
    """The ``shardings`` hook of ``load_hf`` from the project's logical axis rules."""

    def hook(param_path, shape):
        keys = tuple(jax.tree_util.DictKey(k) for k in param_path)
        axes = sharding_rules.param_logical_axes(keys, len(shape))
        spec = sharding_rules.logical_to_spec(axes, shape, mesh)
        return jax.sharding.NamedSharding(mesh, spec)

    return hook


def load_hf(
    path: str, *, dtype=None, param_dtype=None, shardings: Shardings | None = None, mesh=None
) -> Transformer:
    """Loads a local Qwen3/Llama checkpoint directory as a ``Transformer``.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or
        ``model.safetensors.index.json`` and its shards).
      dtype: compute dtype ("float32"/"bfloat16" or a dtype); default: the
        checkpoint's dtype.
      param_dtype: parameter dtype, same choices and default.
      shardings: optional ``(param_path, shape) -> Sharding``, with
        ``param_path`` a tuple of strings such as
        ``('layers', '0', 'attn', 'q_proj', 'kernel')``; each parameter is
        placed with it as it is read.
      mesh: a ``jax.sharding.Mesh``: shorthand for ``shardings=rule_shardings(mesh)``
        (the rules of ``dopd_jax.sharding_rules``), so the full model never sits on
        one device.

    Returns:
      The model; ``model(tokens_BL)`` returns logits [B, L, V].
    """
    if mesh is not None:
        if shardings is not None:
            raise ValueError("give load_hf either shardings or mesh, not both")
        shardings = rule_shardings(mesh)
    path = os.fspath(path)
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        raise ValueError(f"{path}: config.json not found")
    with open(config_file) as f:
        cfg = config_from_hf(json.load(f))
    overrides = {
        k: _dtype_name(v)
        for k, v in (("dtype", dtype), ("param_dtype", param_dtype))
        if v is not None
    }
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    graphdef, params = abstract_params(cfg)
    tensors = checkpoint_tensors(path)
    check_tensors(cfg, params, tensors, checkpoint_source(path))
    filled = []
    for p, var in params:
        key = tuple(map(str, p))
        array = _read(tensors[hf_name(key)])
        array = (array.T if p[-1] == "kernel" else array).astype(var.dtype)
        sharding = shardings(key, var.shape) if shardings else None
        filled.append((p, var.replace(jax.device_put(array, sharding))))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def _flat_params(model_or_params) -> dict[tuple[str, ...], jax.Array]:
    """Parameter leaves keyed by string paths, from a model, State or dict."""
    params = model_or_params
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    return {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp): v for kp, v in leaves}


def save_hf(model_or_params, model_config: ModelConfig, path: str) -> None:
    """Writes ``config.json`` + ``model.safetensors`` in Hugging Face layout.

    The result loads with ``transformers.AutoModelForCausalLM.from_pretrained``
    (Qwen3 when ``qk_norm``, else Llama) and with ``load_hf``.

    Args:
      model_or_params: a ``Transformer``, its ``nnx.State`` or pure dict of
        parameters.
      model_config: the model's config; tensors are written in its
        ``param_dtype``.
      path: output directory (created if needed).
    """
    hf_config = config_to_hf(model_config)
    given = _flat_params(model_or_params)
    _, params = abstract_params(model_config)
    expected = {tuple(map(str, p)): v for p, v in params}
    wrong = sorted(expected.keys() ^ given.keys())
    if wrong:
        what = "missing" if wrong[0] in expected else "unexpected"
        raise ValueError(f"save_hf: {what} parameter {'.'.join(wrong[0])} for {model_config}")
    out = {}
    for key, var in expected.items():
        value = np.asarray(jax.device_get(given[key]))
        if value.shape != var.shape:
            raise ValueError(
                f"save_hf: parameter {'.'.join(key)} has shape "
                f"{value.shape}, {model_config} implies {var.shape}"
            )
        value = value.T if key[-1] == "kernel" else value
        out[hf_name(key)] = np.ascontiguousarray(value.astype(var.dtype))
    os.makedirs(path, exist_ok=True)
    save_file(out, os.path.join(path, _SINGLE), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
