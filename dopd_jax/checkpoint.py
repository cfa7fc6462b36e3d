"""Saving and restoring model parameters with orbax (stage outputs of a run)."""
from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import orbax.checkpoint as ocp
from flax import nnx


def save_params(path: str, params) -> None:
    """Writes an nnx.State of parameters to ``path`` (atomic: orbax commits last)."""
    ck = ocp.StandardCheckpointer()
    ck.save(os.path.abspath(path), nnx.to_pure_dict(params), force=True)
    ck.wait_until_finished()


def has_params(path: str) -> bool:
    """True when ``path`` holds a committed checkpoint."""
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA"))


def load_params(path: str, like):
    """Restores parameters saved by ``save_params`` into the structure of ``like``.

    Raises:
      ValueError: naming the parameter whose shape or dtype differs from ``like``
        (a checkpoint from another architecture or vocabulary).
    """
    expected = nnx.to_pure_dict(like)
    ck = ocp.StandardCheckpointer()
    meta = ck.metadata(os.path.abspath(path))
    stored = getattr(meta.item_metadata, "tree", meta.item_metadata)
    _check_tree(stored, expected, path)
    restored = ck.restore(os.path.abspath(path),
                          jax.tree.map(ocp.utils.to_shape_dtype_struct, expected))
    out = nnx.State(like)
    nnx.replace_by_pure_dict(out, restored)
    return out


def _check_tree(stored, expected, path: str) -> None:
    flat_s = dict(_flatten(stored))
    flat_e = dict(_flatten(expected))
    missing = sorted(set(flat_e) - set(flat_s))
    extra = sorted(set(flat_s) - set(flat_e))
    if missing or extra:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    for k, e in flat_e.items():
        s = flat_s[k]
        if tuple(s.shape) != tuple(e.shape):
            raise ValueError(f"checkpoint {path}: parameter {k} has shape {tuple(s.shape)}, "
                             f"the model expects {tuple(e.shape)}")


def _flatten(tree, prefix=""):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}/{k}" if prefix else str(k))
    else:
        yield prefix, tree
