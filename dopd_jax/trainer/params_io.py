"""Saving and restoring model parameters with orbax (stage outputs of a run), and the
integrity helpers of training-state checkpoints (``train_checkpoint``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
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
    restored = ck.restore(
        os.path.abspath(path), jax.tree.map(ocp.utils.to_shape_dtype_struct, expected)
    )
    out = nnx.State(like)
    nnx.replace_by_pure_dict(out, restored)
    return out


def _check_tree(stored, expected, path: str) -> None:
    flat_s = dict(_flatten(stored))
    flat_e = dict(_flatten(expected))
    missing = sorted(set(flat_e) - set(flat_s))
    extra = sorted(set(flat_s) - set(flat_e))
    if missing or extra:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for k, e in flat_e.items():
        s = flat_s[k]
        if tuple(s.shape) != tuple(e.shape):
            raise ValueError(
                f"checkpoint {path}: parameter {k} has shape {tuple(s.shape)}, "
                f"the model expects {tuple(e.shape)}"
            )


def _flatten(tree, prefix="", sep="/"):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}{sep}{k}" if prefix else str(k), sep)
    else:
        yield prefix, tree


def _leaf_checksum(x: jax.Array) -> jax.Array:
    bits = x.dtype.itemsize * 8
    words = (
        x.astype(jnp.uint32)
        if x.dtype == jnp.bool_
        else jax.lax.bitcast_convert_type(x, jnp.uint32 if bits == 64 else jnp.dtype(f"uint{bits}"))
    )
    words = words.astype(jnp.uint32).ravel()
    weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(words * weights * jnp.uint32(2654435761), dtype=jnp.uint32)


@jax.jit
def _checksums(leaves):
    return [_leaf_checksum(x) for x in leaves]


def fingerprint(tree) -> list[int]:
    """Per-leaf uint32 checksums of a pytree of arrays (computed on device).

    Each is the wrapping sum of the leaf's bit patterns times distinct odd
    weights, so any single flipped bit and most reorderings change it; orbax
    restores flipped bits in array data without complaint.
    """
    return [int(v) for v in jax.device_get(_checksums(jax.tree.leaves(tree)))]


def tree_digest(tree) -> str:
    """A short hex digest of ``fingerprint(tree)`` (names a parameter set, e.g. the teacher)."""
    return hashlib.sha256(json.dumps(fingerprint(tree)).encode()).hexdigest()[:16]


def shapes(tree) -> dict:
    """``{leaf path: [shape, dtype]}`` of a pytree of arrays or shape structs."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(p): [list(x.shape), str(x.dtype)] for p, x in flat}


def config_mismatch(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ, as ``key: <saved> in the checkpoint, <current> now``."""
    a, b = dict(_flatten(saved, sep=".")), dict(_flatten(current, sep="."))
    return [
        f"{k}: {a.get(k, '<absent>')!r} in the checkpoint, {b.get(k, '<absent>')!r} now"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>")
    ]
