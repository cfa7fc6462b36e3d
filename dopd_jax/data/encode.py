"""Examples -> fixed-shape NumPy batches (host side, no JAX).

Segments x, p, y are tokenized separately and their ids concatenated
(methods.md section 1), so y has the same ids under every prefix. Shapes are
fixed by the `max_*` arguments, not by the batch content, so jitted
consumers compile once.
"""
import dataclasses
from collections.abc import Sequence

import numpy as np

from dopd_jax.data import tasks
from dopd_jax.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


@dataclasses.dataclass(frozen=True)
class PromptBatch:
  """Prompts for rollouts and privileged prefixes for scoring.

  P = max_prompt_len and Q = max_priv_len, both counting the BOS.
  """
  prompt_BP: np.ndarray       # int32 [B, P] left-padded [BOS] ids(x)
  prompt_mask_BP: np.ndarray  # bool  [B, P] True on BOS and ids(x)
  priv_BQ: np.ndarray         # int32 [B, Q] left-padded [BOS] ids(x) ids(p)
  priv_mask_BQ: np.ndarray    # bool  [B, Q] True on BOS, ids(x), ids(p)
  domain_ids_B: np.ndarray    # int32 [B] index of the domain in `domains`


@dataclasses.dataclass(frozen=True)
class SFTBatch:
  """Teacher-forced sequences seq = [BOS] x [p] y [EOS], right-padded.

  inputs_BL = seq[:-1] and targets_BL = seq[1:], so the model's output at
  position n is scored against targets_BL[:, n]. L = max_len.
  """
  inputs_BL: np.ndarray     # int32 [B, L] [BOS] ids(x) ids(p) ids(y), pad 0
  targets_BL: np.ndarray    # int32 [B, L] ids(x)[1:].. ids(y) EOS, pad 0
  loss_mask_BL: np.ndarray  # bool  [B, L] True where targets_BL is y or EOS
  priv_shown_B: np.ndarray  # bool  [B] True where a non-empty p was included


def _pad(rows: list[list[int]], length: int, left: bool):
  """Pads id rows to `length`; returns (ids int32 [B, length], mask bool)."""
  ids = np.full((len(rows), length), PAD_ID, np.int32)
  mask = np.zeros((len(rows), length), bool)
  for b, row in enumerate(rows):
    cols = slice(length - len(row), length) if left else slice(0, len(row))
    ids[b, cols] = row
    mask[b, cols] = True
  return ids, mask


def _check_len(kind: str, row: int, got: int, limit: int) -> None:
  if got > limit:
    raise ValueError(f"row {row}: {kind} has {got} tokens (BOS included), "
                     f"above the limit {limit}")


def domain_ids(examples: Sequence[tasks.Example],
               domains: Sequence[str]) -> np.ndarray:
  """int32 [B] index of each example's domain in `domains`."""
  index = {d: i for i, d in enumerate(domains)}
  for row, ex in enumerate(examples):
    if ex.domain not in index:
      raise ValueError(f"row {row}: domain {ex.domain!r} is not in the "
                       f"domain list {list(domains)}")
  return np.array([index[ex.domain] for ex in examples], np.int32)


def encode_prompts(examples: Sequence[tasks.Example], tok: Tokenizer, *,
                   form: str, max_prompt_len: int, max_priv_len: int,
                   domains: Sequence[str] | None = None) -> PromptBatch:
  """Left-padded prompt and privileged-prefix batches.

  Args:
    examples: the batch's examples.
    tok: tokenizer.
    form: privileged form of p ("none" makes the privileged prefix equal to
      the prompt, padded to Q).
    max_prompt_len: P, the prompt width (BOS included).
    max_priv_len: Q, the privileged-prefix width (BOS included).
    domains: the domain list that `domain_ids_B` indexes; defaults to the
      registry order `tuple(tasks.DOMAINS)`.

  Returns:
    A PromptBatch.
  """
  tasks.check_form(form)
  if not examples:
    raise ValueError("encode_prompts needs at least one example")
  prompts, privs = [], []
  for row, ex in enumerate(examples):
    x = tok.encode(ex.prompt)
    if not x:
      raise ValueError(f"row {row}: the prompt is empty")
    prompts.append([BOS_ID] + x)
    privs.append(prompts[-1] + tok.encode(ex.privileged[form]))
    _check_len("prompt", row, len(prompts[-1]), max_prompt_len)
    _check_len(f"prompt + {form!r} privileged context", row, len(privs[-1]),
               max_priv_len)
  prompt, prompt_mask = _pad(prompts, max_prompt_len, left=True)
  priv, priv_mask = _pad(privs, max_priv_len, left=True)
  ids = domain_ids(examples, tuple(tasks.DOMAINS) if domains is None
                   else domains)
  return PromptBatch(prompt, prompt_mask, priv, priv_mask, ids)


def _sft_forms(form: str | Sequence[str]) -> tuple[str, ...]:
  forms = (form,) if isinstance(form, str) else tuple(form)
  if not forms:
    raise ValueError("encode_sft needs at least one privileged form")
  return tuple(tasks.check_form(f) for f in forms)


def encode_sft(examples: Sequence[tasks.Example], tok: Tokenizer, *,
               form: str | Sequence[str], p_dropout: float,
               rng: np.random.Generator, max_len: int,
               use_priv_solution: bool = True) -> SFTBatch:
  """Right-padded SFT batch with per-example privileged-context dropout.

  Args:
    examples: the batch's examples.
    tok: tokenizer.
    form: privileged form of p, or a sequence of forms sampled uniformly
      per example.
    p_dropout: probability of leaving p out of an example.
    rng: NumPy generator for the form and dropout draws (two draws of size
      B per call, whatever the arguments).
    max_len: L; a row needs 1 + |x| + |p| + |y| <= L tokens.
    use_priv_solution: the response is `priv_solution` when p is shown
      (what a privileged teacher must learn, wrong hints included), else
      always the correct `solution`.

  Returns:
    An SFTBatch.
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
    p_text = "" if drop[row] else ex.privileged[forms[pick[row]]]
    shown.append(bool(p_text))
    y_text = ex.priv_solution if p_text and use_priv_solution else ex.solution
    prefix = [BOS_ID] + tok.encode(ex.prompt) + tok.encode(p_text)
    response = tok.encode(y_text) + [EOS_ID]
    seq = prefix + response
    _check_len("SFT input [BOS] x p y", row, len(seq) - 1, max_len)
    inputs.append(seq[:-1])
    targets.append(seq[1:])
    masks.append([False] * (len(prefix) - 1) + [True] * len(response))
  inputs_BL, _ = _pad(inputs, max_len, left=False)
  targets_BL, _ = _pad(targets, max_len, left=False)
  loss_mask = np.zeros((len(examples), max_len), bool)
  for row, m in enumerate(masks):
    loss_mask[row, :len(m)] = m
  return SFTBatch(inputs_BL, targets_BL, loss_mask, np.array(shown, bool))
