"""Distillation methods as plug-ins: one file each, one registry.

    base     Method, Pass, BatchRefs: the interface the framework uses
    opd      vanilla OPD (T->S) and Priv.T->S
    opsd     on-policy self-distillation
    dopd     dual on-policy distillation (+ its collapse monitor)
    gkd      generalized KD: on-policy share lmbda, gold or teacher samples
    grpo     group-relative policy optimization on the task verifier
    mopd     multi-teacher OPD (one teacher per domain) and Param-Merge

``get_method`` takes a registered name or an import path
``package.module:NAME`` to a ``Method`` in the user's own code.
"""

from __future__ import annotations

from dopd_jax import plugins
from dopd_jax.methods.base import (
    BatchRefs,
    Method,
    Pass,
    build_config,
    config_defaults,
    pass_from_name,
    pass_name,
    priv_student_pass,
)
from dopd_jax.methods.dopd import DOPD, DOPDConfig
from dopd_jax.methods.gkd import GKD, GKDConfig
from dopd_jax.methods.grpo import GRPO, GRPOConfig
from dopd_jax.methods.mopd import MERGE, MOPD, MergeConfig, MOPDConfig
from dopd_jax.methods.opd import OPD, PRIVT, OPDConfig
from dopd_jax.methods.opsd import OPSD, OPSDConfig

METHODS: dict[str, Method] = {m.name: m for m in (OPD, PRIVT, OPSD, DOPD, GKD, GRPO, MOPD, MERGE)}


def register(method: Method) -> Method:
    """Adds ``method`` to ``METHODS`` (names are unique); returns it."""
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """A registered method, or the ``Method`` at import path ``package.module:NAME``."""
    if plugins.is_import_path(name):
        method = plugins.load_object(name, "method")
        if not isinstance(method, Method):
            raise ValueError(
                f"method import path {name!r} names a {type(method).__name__}, "
                "not a dopd_jax.methods.Method"
            )
        return method
    if name not in METHODS:
        raise ValueError(
            f"unknown method {name!r}; valid methods: {sorted(METHODS)} "
            "(or an import path 'package.module:NAME')"
        )
    return METHODS[name]


__all__ = [
    "BatchRefs",
    "DOPD",
    "DOPDConfig",
    "GKD",
    "GKDConfig",
    "GRPO",
    "GRPOConfig",
    "MERGE",
    "MOPD",
    "MOPDConfig",
    "MergeConfig",
    "METHODS",
    "Method",
    "OPD",
    "OPDConfig",
    "OPSD",
    "OPSDConfig",
    "PRIVT",
    "Pass",
    "build_config",
    "config_defaults",
    "get_method",
    "pass_from_name",
    "pass_name",
    "priv_student_pass",
    "register",
]
