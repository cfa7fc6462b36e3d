"""Models: the Llama/Qwen3-family decoder, its KV cache, HF import/export, tokenizers."""
from dopd_jax.models.transformer import KVCache
from dopd_jax.models.transformer import ModelConfig
from dopd_jax.models.transformer import Transformer
from dopd_jax.models.transformer import default_positions
from dopd_jax.models.transformer import init_cache
from dopd_jax.models.hf import load_hf
from dopd_jax.models.hf import save_hf
from dopd_jax.models.hf_config import config_from_hf
from dopd_jax.models.tokenizer import Tokenizer, train_tokenizer
from dopd_jax.models.hf_tokenizer import HFTokenizer
