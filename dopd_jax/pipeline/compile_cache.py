"""JAX's persistent compilation cache for the command lines (``--compile_cache``).

Each distillation run builds its own jitted functions, so within one experiment
the same programs (the student's rollout, the greedy evaluation sampler, the
steps two variants of one method share) were compiled again for every run, and
a resumed or re-run experiment compiled everything again. With the cache on,
XLA's compiled executable is stored under its HLO fingerprint and loaded the
next time the same program is compiled, in this process or a later one. A
loaded executable is the one that was compiled, so results do not change
(benchmarks/README.md "Compilation cache": measured on the main experiment).

``--compile_cache``: ``auto`` (default) puts the cache in ``WORKDIR/xla_cache``
unless ``JAX_COMPILATION_CACHE_DIR`` already names one; ``off`` leaves JAX's
own setting alone; anything else is the cache directory. The cache must be
set before the process compiles anything, so only the command lines set it.
"""

from __future__ import annotations

import os

AUTO, OFF = "auto", "off"
FLAG_HELP = "Compilation cache: auto (WORKDIR/xla_cache), off, or a directory."
ENV = "JAX_COMPILATION_CACHE_DIR"


def cache_dir(flag: str, workdir: str, environ=os.environ) -> str | None:
    """The directory ``--compile_cache=flag`` asks for, or None (leave JAX's setting).

    Args:
      flag: ``auto``, ``off`` or a directory.
      workdir: the run's (or sweep's) root; ``auto`` uses ``workdir/xla_cache``.
      environ: the environment (``JAX_COMPILATION_CACHE_DIR`` wins over ``auto``).
    """
    if not flag:
        raise ValueError("--compile_cache must be 'auto', 'off' or a directory, got ''")
    if flag == OFF:
        return None
    if flag == AUTO:
        return None if environ.get(ENV) else os.path.join(workdir, "xla_cache")
    return flag


def enable(path: str | None) -> str | None:
    """Turns the persistent cache on at ``path`` (created if missing); None does nothing.

    Every compiled program is cached, however small or quick to compile (JAX's
    default skips programs that compile in under a second, as small CPU ones do).

    Returns:
      ``path``.
    """
    if path is None:
        return None
    import jax

    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--compile_cache {path} cannot be created: {e.strerror}") from e
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
