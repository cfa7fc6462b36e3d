"""Examples -> fixed-shape NumPy batches (host side, no JAX).

Segments x, p, y are tokenized separately and their ids concatenated
(methods.md section 1), so y has the same ids under every prefix. With a chat
template (``tok.chat``) the prefix x (+ p) is the rendered conversation and y
still follows it as its own segment. Shapes are
fixed by the ``max_*`` arguments, not by the batch content, so jitted
consumers compile once. Special ids (BOS, EOS, PAD) come from the tokenizer;
a tokenizer without BOS (``bos_id is None``) starts sequences with x.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dopd_jax.data.batches import PromptBatch, SFTBatch
from dopd_jax.data.example import Example


def _pad(rows: list[list[int]], length: int, left: bool, pad_id: int):
    """Pads id rows to ``length``; returns (ids int32 [B, length], mask bool)."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for b, row in enumerate(rows):
        cols = slice(length - len(row), length) if left else slice(0, len(row))
        ids[b, cols] = row
        mask[b, cols] = True
    return ids, mask


def _check_len(kind: str, row: int, got: int, limit: int) -> None:
    if got > limit:
        raise ValueError(
            f"row {row}: {kind} has {got} tokens (BOS included), above the limit {limit}"
        )


def _bos(tok) -> list[int]:
    return [] if tok.bos_id is None else [tok.bos_id]


def domain_ids(examples: Sequence[Example], domains: Sequence[str]) -> np.ndarray:
    """int32 [B] index of each example's domain in ``domains``."""
    index = {d: i for i, d in enumerate(domains)}
    for row, ex in enumerate(examples):
        if ex.domain not in index:
            raise ValueError(
                f"row {row}: domain {ex.domain!r} is not in the domain list {list(domains)}"
            )
    return np.array([index[ex.domain] for ex in examples], np.int32)


def prefix_ids(tok, x: str, p: str = "") -> list[int]:
    """Ids of the prefix ``x`` (+ ``p``): ``[BOS] ids(x) ids(p)``, or, when the tokenizer
    carries a chat format (``tok.chat``, ``models.chat.ChatFormat``), the ids of the
    rendered conversation up to the assistant's turn (special tokens come from it)."""
    chat = getattr(tok, "chat", None)
    if chat is not None:
        return tok.encode(chat.render(x, p))
    return _bos(tok) + tok.encode(x) + (tok.encode(p) if p else [])


def prompt_ids(ex: Example, tok, form: str) -> tuple[list[int], list[int]]:
    """``(ids of the prefix x, ids of the prefix x + p)`` of one example."""
    if not tok.encode(ex.prompt):
        raise ValueError(f"the prompt {ex.prompt!r} encodes to no token")
    return prefix_ids(tok, ex.prompt), prefix_ids(tok, ex.prompt, ex.p(form))


def encode_prompts(
    examples: Sequence[Example],
    tok,
    *,
    form: str,
    max_prompt_len: int,
    max_priv_len: int,
    domains: Sequence[str] | None = None,
    max_response_len: int | None = None,
    wrong_hints: bool = False,
) -> PromptBatch:
    """Left-padded prompt and privileged-prefix batches (NumPy leaves).

    Args:
      examples: the batch's examples.
      tok: tokenizer (``encode``, ``bos_id``, ``pad_id``).
      form: privileged form of p (``"none"`` makes the privileged prefix x).
      max_prompt_len: P, the prompt width (BOS included).
      max_priv_len: Q, the privileged-prefix width (BOS included).
      domains: the domain list ``domain_ids_B`` indexes; None leaves it None.
      max_response_len: T; when given, the gold responses ``y [EOS]``
        right-padded (cut at T, then without EOS) fill ``response_BT``.
      wrong_hints: also encode ``x_i + p_{(i+1) mod B}`` (``wrong_priv_BQ``), the
        wrong-hint contrast's prefixes (needs B >= 2).

    Returns:
      A PromptBatch; ValueError names the row of a prompt that does not fit.
    """
    if not examples:
        raise ValueError("encode_prompts needs at least one example")
    prompts, privs = [], []
    for row, ex in enumerate(examples):
        try:
            prompt, priv = prompt_ids(ex, tok, form)
        except (KeyError, ValueError) as e:
            raise ValueError(f"row {row}: {e}") from e
        _check_len("prompt", row, len(prompt), max_prompt_len)
        _check_len(f"prompt + {form!r} privileged context", row, len(priv), max_priv_len)
        prompts.append(prompt)
        privs.append(priv)
    prompt, prompt_mask = _pad(prompts, max_prompt_len, True, tok.pad_id)
    priv, priv_mask = _pad(privs, max_priv_len, True, tok.pad_id)
    ids = None if domains is None else domain_ids(examples, domains)
    batch = PromptBatch(prompt, prompt_mask, priv, priv_mask, ids)
    if max_response_len is not None:
        response, response_mask = gold_responses(examples, tok, max_response_len)
        batch = dataclasses.replace(batch, response_BT=response, response_mask_BT=response_mask)
    if wrong_hints:
        wrong, wrong_mask = wrong_hint_prefixes(examples, tok, form, max_priv_len)
        batch = dataclasses.replace(batch, wrong_priv_BQ=wrong, wrong_priv_mask_BQ=wrong_mask)
    return batch


def wrong_hint_prefixes(examples: Sequence[Example], tok, form: str, width: int):
    """``(ids, mask)`` of ``x_i + p_{(i+1) mod B}``, left-padded to ``width``."""
    if len(examples) < 2:
        raise ValueError("wrong hints need at least 2 prompts per batch (p of another row)")
    rows = []
    for row, ex in enumerate(examples):
        other = examples[(row + 1) % len(examples)]
        ids = prefix_ids(tok, ex.prompt, other.p(form))
        _check_len(f"prompt + wrong {form!r} hint", row, len(ids), width)
        rows.append(ids)
    return _pad(rows, width, True, tok.pad_id)


def gold_responses(examples: Sequence[Example], tok, width: int):
    """``(ids, mask)`` ``[B, width]`` of the examples' gold ``y [EOS]``, right-padded."""
    rows = []
    for row, ex in enumerate(examples):
        if ex.response is None:
            raise ValueError(
                f"row {row}: example {ex.prompt[:60]!r} has no gold response "
                "(off-policy batches need one, or the teacher's samples: seq_kd)"
            )
        rows.append((tok.encode(ex.response) + [tok.eos_id])[:width])
    return _pad(rows, width, False, tok.pad_id)


def _sft_forms(form: str | Sequence[str]) -> tuple[str, ...]:
    forms = (form,) if isinstance(form, str) else tuple(form)
    if not forms:
        raise ValueError("encode_sft needs at least one privileged form")
    return forms


def sft_ids(ex: Example, tok, p_text: str) -> tuple[list[int], list[int]]:
    """``(prefix, response)`` ids: ``[BOS] x p`` and ``y [EOS]`` (``y`` per ``Example.target``)."""
    y_text = ex.target(bool(p_text))
    if y_text is None:
        raise ValueError(f"example {ex.prompt[:60]!r} has no response to train on")
    return prefix_ids(tok, ex.prompt, p_text), tok.encode(y_text) + [tok.eos_id]


def encode_sft(
    examples: Sequence[Example],
    tok,
    *,
    form: str | Sequence[str],
    p_dropout: float,
    rng: np.random.Generator,
    max_len: int,
    return_shown: bool = False,
):
    """Right-padded SFT batch with per-example privileged-context dropout.

    Args:
      examples: the batch's examples.
      tok: tokenizer (``encode``, ``bos_id``, ``eos_id``, ``pad_id``).
      form: privileged form of p, or a sequence of forms sampled uniformly
        per example.
      p_dropout: probability of leaving p out of an example.
      rng: NumPy generator for the form and dropout draws (two draws of size
        B per call, whatever the arguments).
      max_len: L; a row needs ``|[BOS] x p y|`` <= L tokens.
      return_shown: also return bool [B], True where a non-empty p was shown.

    Returns:
      An SFTBatch (and the shown mask). The response is ``priv_response`` when
      p is shown and the example has one, else ``response``.
    """
    forms = _sft_forms(form)
    if not 0.0 <= p_dropout <= 1.0:
        raise ValueError(f"p_dropout must be in [0, 1], got {p_dropout}")
    if not examples:
        raise ValueError("encode_sft needs at least one example")
    pick = rng.integers(len(forms), size=len(examples))
    drop = rng.random(len(examples)) < p_dropout
    inputs, targets, masks, shown = [], [], [], []
    for row, ex in enumerate(examples):
        try:
            p_text = "" if drop[row] else ex.p(forms[pick[row]])
            prefix, response = sft_ids(ex, tok, p_text)
        except (KeyError, ValueError) as e:
            raise ValueError(f"row {row}: {e}") from e
        seq = prefix + response
        _check_len("SFT input [BOS] x p y", row, len(seq) - 1, max_len)
        shown.append(bool(p_text))
        inputs.append(seq[:-1])
        targets.append(seq[1:])
        masks.append([False] * (len(prefix) - 1) + [True] * len(response))
    inputs_BL, input_mask_BL = _pad(inputs, max_len, False, tok.pad_id)
    targets_BL, _ = _pad(targets, max_len, False, tok.pad_id)
    loss_mask = np.zeros((len(examples), max_len), bool)
    for row, m in enumerate(masks):
        loss_mask[row, : len(m)] = m
    batch = SFTBatch(inputs_BL, targets_BL, loss_mask, input_mask_BL)
    return (batch, np.array(shown, bool)) if return_shown else batch
