"""A Hugging Face ``tokenizer.json`` behind the interface of ``tokenizer.Tokenizer``.

Special ids are looked up, per role, in this order: an explicit argument to
``from_file``, ``tokenizer_config.json`` (``eos_token`` ...),
``special_tokens_map.json`` (same keys), ``config.json`` (``eos_token_id``
...), all in the tokenizer's directory. EOS and pad are required (a missing
one raises a ValueError naming the files and keys searched); BOS may be
absent (Qwen3 has none), in which case ``bos_id`` is None.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence

import numpy as np
import tokenizers

_ROLES = ("eos", "pad", "bos")
_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _read_json(directory: str, name: str) -> dict:
    file = os.path.join(directory, name)
    if not os.path.exists(file):
        return {}
    with open(file) as f:
        return json.load(f)


def _token_id(tok: tokenizers.Tokenizer, token, where: str) -> int:
    """Id of a token given as text or as an AddedToken dict."""
    text = token.get("content") if isinstance(token, dict) else token
    i = tok.token_to_id(text) if isinstance(text, str) else None
    if i is None:
        raise ValueError(f"{where}: token {token!r} is not in the vocabulary")
    return i


def _special_id(tok, directory: str, role: str, override) -> int | None:
    """The id of one special role from the first source that defines it."""
    if override is not None:
        return (
            override
            if isinstance(override, int)
            else _token_id(tok, override, f"{role}_token argument")
        )
    for name in _TOKEN_FILES:
        token = _read_json(directory, name).get(f"{role}_token")
        if token is not None:
            return _token_id(tok, token, f"{name}[{role}_token]")
    value = _read_json(directory, "config.json").get(f"{role}_token_id")
    if isinstance(value, list):
        raise ValueError(
            f"config.json[{role}_token_id]={value} lists several "
            f"ids; pass {role}_token= to choose one"
        )
    if value is None and role != "bos":
        raise ValueError(
            f"{directory}: no {role} token: none of "
            f"{', '.join(f'{n}[{role}_token]' for n in _TOKEN_FILES)}, "
            f"config.json[{role}_token_id] defines it; pass {role}_token="
        )
    return value


class HFTokenizer:
    """Wraps ``tokenizers.Tokenizer`` with special ids read from its directory."""

    def __init__(
        self, tok: tokenizers.Tokenizer, *, eos_id: int, pad_id: int, bos_id: int | None = None
    ):
        """Builds the wrapper; ids must lie inside the vocabulary."""
        self._tok = tok
        self.eos_id, self.pad_id, self.bos_id = eos_id, pad_id, bos_id
        for role in _ROLES:
            i = getattr(self, f"{role}_id")
            if i is not None and not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"{role}_id={i} is outside the vocabulary of size {self.vocab_size}"
                )
        unk = getattr(tok.model, "unk_token", None)
        self.unk_id = tok.token_to_id(unk) if unk else None
        self.chat = None  # a models.chat.ChatFormat once with_chat() is called

    def with_chat(self, chat) -> HFTokenizer:
        """A copy whose prefixes x (+ p) are rendered with ``chat`` (``data.encode``)."""
        out = copy.copy(self)
        out.chat = chat
        return out

    def special_tokens(self) -> tuple[tuple[str, str], ...]:
        """``(("bos_token", text), ("eos_token", text), ...)`` for chat templates."""
        out = []
        for role in _ROLES:
            i = getattr(self, f"{role}_id")
            if i is not None:
                out.append((f"{role}_token", self._tok.id_to_token(i)))
        return tuple(out)

    def probe(self) -> dict:
        """What two tokenizers must agree on to share one vocabulary: size, special ids,
        and the ids of a probe text."""
        text = "Probe: 12 + 30 = 42; x^2 (mod 7) -> 'ok'\n\tÜber naïve 東京"
        return {
            "vocab_size": self.vocab_size,
            **{f"{role}_id": getattr(self, f"{role}_id") for role in _ROLES},
            "probe_ids": self._tok.encode(text, add_special_tokens=False).ids,
        }

    @classmethod
    def from_file(cls, path: str, *, eos_token=None, pad_token=None, bos_token=None) -> HFTokenizer:
        """Loads ``tokenizer.json`` (or a directory holding it).

        Args:
          path: the ``tokenizer.json`` file or its directory.
          eos_token, pad_token, bos_token: optional overrides (token text or id)
            for tokenizers whose files do not define them.

        Returns:
          The tokenizer.
        """
        path = os.fspath(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.exists(file):
            raise ValueError(f"{file}: tokenizer.json not found")
        tok = tokenizers.Tokenizer.from_file(file)
        directory = os.path.dirname(file)
        overrides = dict(eos=eos_token, pad=pad_token, bos=bos_token)
        ids = {f"{role}_id": _special_id(tok, directory, role, overrides[role]) for role in _ROLES}
        return cls(tok, **ids)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added (special) tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Ids of one segment, without BOS/EOS or other added special tokens.

        Args:
          text: the segment's text.

        Returns:
          A list of ids. Raises ValueError if the text maps to the unknown token.
        """
        encoding = self._tok.encode(text, add_special_tokens=False)
        if self.unk_id is not None and self.unk_id in encoding.ids:
            unknown = [
                text[a:b] for (a, b), i in zip(encoding.offsets, encoding.ids) if i == self.unk_id
            ]
            raise ValueError(f"pieces {unknown} of {text!r} are not in the tokenizer's vocabulary")
        return list(encoding.ids)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids`` up to the first EOS, ignoring pad and BOS ids."""
        kept = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                kept.append(i)
        return self._tok.decode(kept, skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        """The token string of an id (for inspection)."""
        return self._tok.id_to_token(int(i))
