"""``benchmarks.compare`` end to end at the tiny shape, and its FLOP counts against XLA's."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from benchmarks import compare_jax, compare_shapes, profile_ops, timing
from dopd_jax.models import Transformer

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIGURES = (
    "sampler_speedup_vs_hf_generate",
    "step_speedup_vs_trl",
    "dopd_over_opd_step_time",
    "update_mfu",
)


def _xla_flops(fn, *args) -> float:
    return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


@pytest.mark.parametrize("length,logits", [(64, 64), (96, 32)])
def test_forward_flops_match_xla_cost_analysis(length, logits):
    s = compare_shapes.SHAPES["tiny"]
    graphdef, params = nnx.split(Transformer(compare_jax.model_config(s), rngs=nnx.Rngs(0)))
    tokens = jnp.zeros((1, length), jnp.int32)

    def forward(params, tokens):
        model = nnx.merge(graphdef, params)
        return model.logits(model.hidden(tokens)[:, -logits:])

    ours = compare_shapes.sequence_forward_flops(s, length, logits)
    # XLA also counts the masked upper half of causal attention, norms and softmaxes.
    attention_half = 2 * s.n_layers * s.n_heads * s.head_dim * length * (length - 1)
    xla = _xla_flops(forward, params, tokens)
    assert ours <= xla <= 1.1 * (ours + attention_half)


def test_timing_ratio_takes_the_range_from_the_extremes():
    a = timing.summary([2.0, 4.0, 3.0])
    b = timing.summary([1.0, 2.0])
    r = timing.ratio(a, b)
    assert r == {"median": 3.0 / 1.5, "min": 2.0 / 2.0, "max": 4.0 / 1.0}


def test_compare_writes_every_figure_at_the_tiny_shape(tmp_path):
    out = tmp_path / "compare.json"
    cmd = [sys.executable, "-m", "benchmarks.compare", "--json", str(out)]
    proc = subprocess.run(
        cmd + ["--shapes", "tiny", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    fig = result["tiny"]["figures"]
    for name in FIGURES:
        assert set(fig[name]) == {"median", "min", "max"}, name
        assert 0 < fig[name]["min"] <= fig[name]["median"] <= fig[name]["max"], name
    assert 0 < fig["decode_fraction_of_peak"] < 1 and 0 < fig["update_mfu"]["median"] < 1
    assert 0 < result["loss_peak_memory_ratio"] < 1
    peers = result["tiny"]["peers"]
    assert peers["hf_generate"]["time_s"]["n"] == 1 and peers["trl_step"]["step_s"]["n"] == 1
    phases = result["tiny"]["ours"]["opd"]
    assert set(phases) == {"rollout", "score", "update", "step"}


def test_compare_names_an_unknown_shape(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.compare", "--json", str(tmp_path / "x.json")]
    proc = subprocess.run(cmd + ["--shapes", "huge"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown shape 'huge'" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_profile_ops_names_the_backward_matmul():
    def loss(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    w, x = jnp.ones((8, 4)), jnp.ones((16, 8))
    hlo = jax.jit(jax.grad(loss)).lower(w, x).compile().as_text()
    ops = profile_ops.hlo_ops(hlo)
    kinds = {profile_ops.category(opcode, op_name) for _, opcode, op_name in ops.values()}
    assert "matmuls backward" in kinds
    assert profile_ops.category("fusion", "jit(sample)/while/body/sample_tokens/reduce") == (
        "sampling"
    )
    assert profile_ops.category("fusion", "jit(f)/btd,vd->btv/dot_general") == "logits"


def test_profile_ops_attributes_a_tiny_decode_step(tmp_path):
    out = tmp_path / "profile.json"
    cmd = [sys.executable, "-m", "benchmarks.profile_ops", "--shape", "tiny", "--json", str(out)]
    proc = subprocess.run(
        cmd + ["--new-tokens", "5"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    shares = {name: c["share"] for name, c in result["categories"].items()}
    assert abs(sum(shares.values()) - 1) < 1e-6
    assert {"matmuls", "logits", "sampling"} <= set(shares)
    assert 0 < result["attributed_s"] <= result["wall_s_under_profiler"]
