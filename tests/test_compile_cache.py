"""The command lines' persistent compilation cache (pipeline/compile_cache.py)."""

import os
import subprocess
import sys

import pytest

from dopd_jax.pipeline import compile_cache


def test_auto_is_under_the_workdir_unless_the_environment_names_one():
    assert compile_cache.cache_dir("auto", "/w", environ={}) == os.path.join("/w", "xla_cache")
    assert compile_cache.cache_dir("auto", "/w", environ={compile_cache.ENV: "/c"}) is None


def test_off_and_an_explicit_directory():
    assert compile_cache.cache_dir("off", "/w", environ={}) is None
    assert compile_cache.cache_dir("/elsewhere", "/w", environ={compile_cache.ENV: "/c"}) == (
        "/elsewhere"
    )


def test_empty_flag_is_an_error_naming_it():
    with pytest.raises(ValueError, match="--compile_cache"):
        compile_cache.cache_dir("", "/w", environ={})


def test_enable_none_does_nothing():
    assert compile_cache.enable(None) is None


_PROGRAM = """
import sys
import jax, jax.numpy as jnp
from dopd_jax.pipeline import compile_cache
compile_cache.enable(sys.argv[1])
x = jax.random.normal(jax.random.key(0), (32, 32))
y = jax.jit(lambda a: jnp.tanh(a @ a.T).sum(0))(x)
print(repr(jax.device_get(y).tobytes().hex()))
"""


def test_a_second_process_loads_the_program_and_gets_the_same_bits(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop(compile_cache.ENV, None)
    env.pop("XLA_FLAGS", None)  # one device, like the command lines by default

    def run():
        cmd = [sys.executable, "-c", _PROGRAM, str(cache)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    first = run()
    entries = sorted(p.name for p in cache.iterdir())
    assert any(name.startswith("jit__lambda") for name in entries), entries
    assert run() == first
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing new was compiled
