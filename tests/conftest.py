"""Test setup: 8 simulated CPU devices, set before JAX is imported, and one persistent
JAX compilation cache shared by the session's workers and the runs they start.

Many tests compile the same smoke-size steps (in-process and in ``dopd_jax.run``
subprocesses); the cache turns the repeats into loads. The pytest process that loads
this file first (the xdist controller, whose environment the workers inherit) names
it after its pid in the temp dir and removes it when the session ends, so every
session starts cold. Cached executables are the ones a fresh compile produces
(``test_resume`` checks a cached restart against a cold run bit for bit).
"""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OWN_CACHE = os.path.join(tempfile.gettempdir(), f"dopd_jax_test_jit_cache_{os.getpid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _OWN_CACHE)


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the controller, after all workers
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
