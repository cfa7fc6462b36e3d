"""Import paths for plug-ins: ``package.module:NAME`` resolved with a clear error."""

from __future__ import annotations

import importlib
from typing import Any


def is_import_path(name: str) -> bool:
    """True for ``package.module:NAME`` (registered names never contain a colon)."""
    return ":" in name


def load_object(path: str, what: str = "object") -> Any:
    """The attribute ``NAME`` of module ``package.module`` for ``path = "package.module:NAME"``.

    Args:
      path: the import path.
      what: what the object is, for error messages ("method", "verifier", ...).

    Raises:
      ValueError: malformed path, module not importable, or no such attribute.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} import path {path!r} must look like 'package.module:NAME'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"{what} import path {path!r}: cannot import module {module_name!r} ({e})"
        ) from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(
                f"{what} import path {path!r}: module {module_name!r} has no attribute {attr!r}"
            )
        obj = getattr(obj, part)
    return obj
