"""The two batch types that cross the jit boundary, one per concept.

``PromptBatch`` feeds rollouts and scoring (on-policy distillation and
evaluation); ``SFTBatch`` feeds teacher-forced supervised fine-tuning. The
encoders (``data.encode``) build them as NumPy arrays of fixed width; the
step functions take the same types holding ``jax.Array``s.
"""

from __future__ import annotations

import dataclasses
import functools

import jax


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "prompt_BP",
        "prompt_mask_BP",
        "priv_BQ",
        "priv_mask_BQ",
        "domain_ids_B",
        "response_BT",
        "response_mask_BT",
        "wrong_priv_BQ",
        "wrong_priv_mask_BQ",
    ],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Prompts x and privileged prefixes x + p, one row per prompt (before n_samples).

    P and Q are the configured prompt / privileged-prefix widths (BOS included).
    """

    prompt_BP: jax.Array  # int32 [B, P] left-padded [BOS] ids(x)
    prompt_mask_BP: jax.Array  # bool [B, P] True on real tokens
    priv_BQ: jax.Array  # int32 [B, Q] left-padded [BOS] ids(x) ids(p)
    priv_mask_BQ: jax.Array  # bool [B, Q] True on real tokens
    domain_ids_B: jax.Array | None = None  # int32 [B] index of each row's domain (MOPD)
    response_BT: jax.Array | None = None  # int32 [B, T] gold ``y [EOS]``, right-padded (GKD)
    response_mask_BT: jax.Array | None = None  # bool [B, T] True on its tokens
    wrong_priv_BQ: jax.Array | None = None  # int32 [B, Q] x_i + p_{(i+1) mod B} (wrong hint)
    wrong_priv_mask_BQ: jax.Array | None = None


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["inputs_BL", "targets_BL", "loss_mask_BL", "input_mask_BL"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class SFTBatch:
    """Teacher-forced sequences ``[BOS] x [p] y [EOS]``, right-padded to L.

    ``inputs_BL = seq[:-1]`` and ``targets_BL = seq[1:]``: the output at
    position n is scored against ``targets_BL[:, n]``.
    """

    inputs_BL: jax.Array  # int32 [B, L] input ids, pad after the sequence
    targets_BL: jax.Array  # int32 [B, L] next-token ids
    loss_mask_BL: jax.Array  # bool [B, L] True where the target is a response token or EOS
    input_mask_BL: jax.Array  # bool [B, L] True on real input tokens
