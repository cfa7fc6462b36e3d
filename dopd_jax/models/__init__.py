"""Models: the Llama/Qwen3-family decoder, its KV cache, HF import/export, tokenizers."""

from dopd_jax.models.hf import load_hf, save_hf
from dopd_jax.models.hf_config import config_from_hf
from dopd_jax.models.hf_tokenizer import HFTokenizer
from dopd_jax.models.tokenizer import Tokenizer, train_tokenizer
from dopd_jax.models.transformer import (
    KVCache,
    ModelConfig,
    Transformer,
    default_positions,
    init_cache,
)

__all__ = [
    "HFTokenizer",
    "KVCache",
    "ModelConfig",
    "Tokenizer",
    "Transformer",
    "config_from_hf",
    "default_positions",
    "init_cache",
    "load_hf",
    "save_hf",
    "train_tokenizer",
]
