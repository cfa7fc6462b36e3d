"""Greedy evaluation with a task verifier, with or without privileged context."""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import numpy as np

from dopd_jax import rollout as rollout_lib, sharding
from dopd_jax.data import encode, tasks


def pad_left(x_BP: np.ndarray, width: int, value=0) -> np.ndarray:
    """Left-pads (never truncates) a [B, P] array to ``width`` columns."""
    b, p = x_BP.shape
    if p > width:
        raise ValueError(f"prompt batch is {p} tokens wide, more than the maximum {width}")
    out = np.full((b, width), value, dtype=x_BP.dtype)
    out[:, width - p:] = x_BP
    return out


@dataclasses.dataclass(frozen=True)
class PromptArrays:
    """Fixed-width prompt arrays for a list of examples (host numpy)."""

    prompt_BP: np.ndarray  # int32, left-padded to max_prompt_len
    prompt_mask_BP: np.ndarray  # bool
    priv_BQ: np.ndarray  # int32, left-padded to max_priv_len
    priv_mask_BQ: np.ndarray  # bool


def prompt_arrays(examples, tok, *, form: str, max_prompt_len: int,
                  max_priv_len: int) -> PromptArrays:
    """Encodes examples into fixed-width arrays, so jitted shapes never change."""
    pb = encode.encode_prompts(examples, tok, form=form, max_prompt_len=max_prompt_len,
                               max_priv_len=max_priv_len)
    return PromptArrays(pad_left(pb.prompt_BP, max_prompt_len),
                        pad_left(pb.prompt_mask_BP, max_prompt_len, False),
                        pad_left(pb.priv_BQ, max_priv_len),
                        pad_left(pb.priv_mask_BQ, max_priv_len, False))


def make_greedy_sampler(graphdef, *, max_new_tokens: int, eos_id: int, pad_id: int):
    """The jitted greedy sampler used by every evaluation (one call site)."""
    cfg = rollout_lib.SamplerConfig(max_new_tokens=max_new_tokens, eos_id=eos_id,
                                    pad_id=pad_id, greedy=True)
    cfg.validate()
    return jax.jit(functools.partial(_greedy, graphdef, cfg))


def _greedy(graphdef, cfg, params, prompt_BP, mask_BP):
    ro = rollout_lib.sample(graphdef, params, prompt_BP, mask_BP, jax.random.key(0), cfg)
    return ro.tokens_BT, ro.mask_BT, ro.truncated_B


def accuracy(sampler, params, examples: Sequence, tok, *, privileged: bool, form: str,
             max_prompt_len: int, max_priv_len: int, batch_size: int, mesh=None) -> dict:
    """Greedy accuracy of ``params`` on ``examples`` under the task verifier.

    Args:
      sampler: from ``make_greedy_sampler``.
      params: model parameters.
      examples: evaluation examples.
      tok: the tokenizer.
      privileged: condition on x + p (form ``form``) instead of x alone.
      form, max_prompt_len, max_priv_len: prompt encoding settings.
      batch_size: rows per sampler call; the last batch is padded by repetition.
      mesh: the device mesh of ``params``; with several processes each feeds
        only its rows of every batch (every process gets every result).

    Returns:
      dict with ``acc``, ``response_len`` and ``truncated_frac``.
    """
    correct, lengths, truncated = [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
        arr = prompt_arrays(padded, tok, form=form, max_prompt_len=max_prompt_len,
                            max_priv_len=max_priv_len)
        ids, mask = (arr.priv_BQ, arr.priv_mask_BQ) if privileged else (
            arr.prompt_BP, arr.prompt_mask_BP)
        if mesh is not None:
            ids, mask = sharding.to_global_batch((ids, mask), mesh)
        tokens_BT, mask_BT, trunc_B = sharding.to_host(sampler(params, ids, mask))
        for i, ex in enumerate(chunk):
            text = tok.decode([int(t) for t in tokens_BT[i][mask_BT[i]]])
            correct.append(tasks.verify(ex, text))
            lengths.append(int(mask_BT[i].sum()))
            truncated.append(bool(trunc_B[i]))
    return {"acc": float(np.mean(correct)), "response_len": float(np.mean(lengths)),
            "truncated_frac": float(np.mean(truncated))}
