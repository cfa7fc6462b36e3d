"""Paper scale on paper: the Qwen3-8B -> Qwen3-1.7B DOPD step fits 80 GB per device.

Nothing is materialised. The fused micro-batched score + update step
(``dopd_jax.microbatch``) of ``experiments/qwen3_8b_to_1p7b.py`` is lowered
for abstract inputs (``jax.ShapeDtypeStruct`` with NamedShardings) on the 8
simulated CPU devices and compiled at full depth (36 teacher + 28 student
layers, real widths, V = 151,936, 128 prompts x 4 rollouts, prompt 1,024 /
privileged prefix 2,048 / response 2,048 tokens). The step scans over stacked
layers, so one full-depth compile takes ~30-60 s on 2 cores; no depth
extrapolation is needed. Per device, total = arguments + outputs + temp -
aliased, from XLA's ``memory_analysis()``. XLA:CPU computes bf16 in float32,
so temp over-estimates GPU/TPU memory: a plan that fits here has margin there.

The sampler is not checked here: ``benchmarks/paper_scale_memory.py --rollout``
measures it (20.6 GB per device for 128 prompts in chunks of 32).
"""

import dataclasses
import importlib.util
import math
import pathlib

import jax
import pytest

from dopd_jax.models import hf_config
from dopd_jax.pipeline import config_checks as validation

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUDGET_BYTES = 80e9  # one 80 GB accelerator

# The Hugging Face config.json values that matter for the math (Qwen3-8B, Qwen3-1.7B).
_QWEN3 = dict(
    model_type="qwen3",
    vocab_size=151936,
    head_dim=128,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    torch_dtype="bfloat16",
    hidden_act="silu",
    attention_bias=False,
    use_sliding_window=False,
    sliding_window=None,
)
QWEN3_8B = dict(
    _QWEN3,
    hidden_size=4096,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=12288,
    tie_word_embeddings=False,
)
QWEN3_1P7B = dict(
    _QWEN3,
    hidden_size=2048,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    intermediate_size=6144,
    tie_word_embeddings=True,
)


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("benchmarks/paper_scale_memory.py", "paper_scale_memory")


@pytest.fixture(scope="module")
def experiment():
    return _load("experiments/qwen3_8b_to_1p7b.py", "qwen3_8b_to_1p7b")


def test_paper_config_is_qwen3_8b_to_1p7b_with_paper_hyperparameters(bench, experiment):
    c = experiment.get_config()
    teacher, student = bench.model_configs(c)
    assert teacher == hf_config.config_from_hf(QWEN3_8B)
    # The student trains float32 master weights and computes in bfloat16.
    assert student == dataclasses.replace(
        hf_config.config_from_hf(QWEN3_1P7B), param_dtype="float32"
    )
    d = c.distill
    assert (d.lr, d.steps, d.batch_prompts, d.n_samples, c.method_args.dopd.top_k) == (
        5e-6,
        200,
        128,
        4,
        128,
    )
    assert {"dopd", "opd"} <= set(d.methods)
    assert (c.task.max_prompt_len, c.task.max_priv_len, d.max_new_tokens) == (1024, 2048, 2048)
    assert jax.device_count() == 8  # the paper mesh below is built on these
    # Without checkpoints the config is a specification: running it is refused by name.
    with pytest.raises(ValueError, match="'hf:' needs a checkpoint directory"):
        validation.validate(c)


def _expected_argument_bytes(bench, c, shards):
    """Teacher params (bf16) + student float32 master params and two AdamW moments,
    split over ``shards``."""
    total = 0
    for cfg, copies in zip(bench.model_configs(c), (1, 3)):
        _, params = bench._abstract_model(cfg)
        total += copies * sum(
            math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(params)
        )
    return total / shards


def test_paper_plan_fits_80gb_per_device(bench, experiment):
    c = experiment.get_config()
    mem = bench.step_memory(c, dict(c.mesh), c.distill.num_microbatches, remat=c.distill.remat)
    print({k: f"{v / 1e9:.2f} GB" for k, v in mem.items() if k != "compile_s"})
    # Sharded weights and optimizer state, nothing pruned or replicated.
    assert mem["arguments"] == pytest.approx(_expected_argument_bytes(bench, c, 8), rel=0.02)
    assert mem["total"] < BUDGET_BYTES


def test_unsharded_single_microbatch_does_not_fit(bench, experiment):
    c = experiment.get_config()
    mem = bench.step_memory(c, None, 1)
    assert mem["arguments"] == pytest.approx(_expected_argument_bytes(bench, c, 1), rel=0.02)
    assert mem["total"] > BUDGET_BYTES
