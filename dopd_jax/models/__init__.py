"""Model definitions: the Llama/Qwen3-family decoder and its KV cache."""
from dopd_jax.models.transformer import KVCache
from dopd_jax.models.transformer import ModelConfig
from dopd_jax.models.transformer import Transformer
from dopd_jax.models.transformer import default_positions
from dopd_jax.models.transformer import init_cache
