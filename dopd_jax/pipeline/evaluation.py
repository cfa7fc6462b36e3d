"""Evaluation with a task verifier: greedy accuracy and sampled avg@k, with or without p."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np

from dopd_jax import sharding
from dopd_jax.data import encode
from dopd_jax.steps import rollout as rollout_lib


@functools.lru_cache(maxsize=32)
def make_sampler(
    graphdef, *, max_new_tokens: int, eos_id: int, pad_id: int, k: int = 1, temperature: float = 1.0
):
    """The jitted evaluation sampler: greedy for ``k == 1`` (key ignored), else k samples.

    Memoized on its arguments, so every run of an experiment whose student has
    the same graph reuses one compiled sampler instead of compiling its own."""
    cfg = rollout_lib.SamplerConfig(
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        greedy=k == 1,
        n_samples=k,
        temperature=temperature,
    )
    cfg.validate()
    return jax.jit(functools.partial(_sample, graphdef, cfg))


def _sample(graphdef, cfg, params, prompt_BP, mask_BP, key):
    ro = rollout_lib.sample(graphdef, params, prompt_BP, mask_BP, key, cfg)
    return ro.tokens_BT, ro.mask_BT, ro.truncated_B


def _batches(examples: Sequence, batch_size: int):
    """Chunks of ``batch_size`` rows; the last is padded by repeating its last row."""
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        yield chunk, chunk + [chunk[-1]] * (batch_size - len(chunk))


def accuracy(
    sampler,
    params,
    examples: Sequence,
    tok,
    verifier: Callable,
    *,
    privileged: bool,
    form: str,
    max_prompt_len: int,
    max_priv_len: int,
    batch_size: int,
    mesh=None,
    k: int = 1,
    key=None,
) -> dict:
    """Accuracy of ``params`` on ``examples`` under ``verifier``.

    Args:
      sampler: from ``make_sampler`` (``k`` responses per prompt).
      params: model parameters.
      examples: evaluation examples.
      tok: the tokenizer.
      verifier: ``(example, response_text) -> bool``.
      privileged: condition on x + p (form ``form``) instead of x alone.
      form, max_prompt_len, max_priv_len: prompt encoding settings.
      batch_size: prompts per sampler call; the last batch is padded by repetition.
      mesh: the device mesh of ``params``; with several processes each feeds
        only its rows of every batch (every process gets every result).
      k: responses per prompt (must match the sampler); accuracy is their mean
        (avg@k; greedy accuracy for k = 1).
      key: PRNG key of the sampled responses (k > 1).

    Returns:
      dict with ``acc``, ``response_len`` and ``truncated_frac``.
    """
    key = jax.random.key(0) if key is None else key
    correct, lengths, truncated = [], [], []
    for i, (chunk, padded) in enumerate(_batches(examples, batch_size)):
        arr = encode.encode_prompts(
            padded, tok, form=form, max_prompt_len=max_prompt_len, max_priv_len=max_priv_len
        )
        ids, mask = (
            (arr.priv_BQ, arr.priv_mask_BQ) if privileged else (arr.prompt_BP, arr.prompt_mask_BP)
        )
        if mesh is not None:
            ids, mask = sharding.to_global_batch((ids, mask), mesh)
        out = sampler(params, ids, mask, jax.random.fold_in(key, i))
        tokens_BT, mask_BT, trunc_B = sharding.to_host(out)
        for row in range(len(chunk) * k):
            text = tok.decode([int(t) for t in tokens_BT[row][mask_BT[row]]])
            correct.append(verifier(chunk[row // k], text))
            lengths.append(int(mask_BT[row].sum()))
            truncated.append(bool(trunc_B[row]))
    return {
        "acc": float(np.mean(correct)),
        "response_len": float(np.mean(lengths)),
        "truncated_frac": float(np.mean(truncated)),
    }


def row_rewards(tok, verifier: Callable, examples, n_samples: int, ro) -> np.ndarray:
    """float32 [B]: 1 where the verifier accepts a rollout row's response (host side;
    with several processes the rollout is gathered, a collective every process must call)."""
    tokens_BT, mask_BT = sharding.to_host((ro.tokens_BT, ro.mask_BT))
    ok = [
        verifier(
            examples[row // n_samples], tok.decode([int(t) for t in tokens_BT[row][mask_BT[row]]])
        )
        for row in range(tokens_BT.shape[0])
    ]
    return np.asarray(ok, np.float32)


def rollout_reward(tok, verifier: Callable, examples, n_samples: int, ro) -> dict:
    """Mean reward of a rollout, and per domain (``reward/<domain>``) for mixed batches.
    Uses ``ro.reward_B`` when the step already has it."""
    if ro.reward_B is not None:
        reward = np.asarray(sharding.to_host(ro.reward_B), np.float32)
    else:
        reward = row_rewards(tok, verifier, examples, n_samples, ro)
    out = {"reward": float(np.mean(reward))}
    domains = [examples[row // n_samples].domain for row in range(len(reward))]
    if len(set(domains)) > 1:
        for d in sorted(set(domains)):
            out[f"reward/{d}"] = float(np.mean([r for r, x in zip(reward, domains) if x == d]))
    return out
