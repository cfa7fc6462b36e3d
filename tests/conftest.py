"""Test setup: 8 simulated CPU devices, set before JAX is imported, XLA's backend
optimization level 0, and one persistent JAX compilation cache shared by the
session's workers and the runs they start.

The suite compiles hundreds of smoke-size programs whose run time is negligible, so
LLVM's optimization passes are the cost: level 0 took one compile-bound test from
67 s to 53 s on the 2-core machine (numerics are IEEE either way; the loss, routing
and paper-scale memory tests pass unchanged under it).

Many tests compile the same smoke-size steps (in-process and in ``dopd_jax.run``
subprocesses); the cache turns the repeats into loads. The pytest process that loads
this file first (the xdist controller, whose environment the workers inherit) names
it after its pid in the temp dir and removes it when the session ends, so every
session starts cold. Cached executables are the ones a fresh compile produces
(``test_resume_e2e`` checks a cached restart against a cold run bit for bit).
"""

import os
import shutil
import tempfile

from processes import XLA_OPT  # noqa: E402 (tests/ is on sys.path before conftest loads)

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {XLA_OPT}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OWN_CACHE = os.path.join(tempfile.gettempdir(), f"dopd_jax_test_jit_cache_{os.getpid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _OWN_CACHE)


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the controller, after all workers
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
