"""A small SentencePiece tokenizer, trained in memory on the task corpus.

Special ids are fixed: pad 0, eos 1, bos 2, unk 3. Numbers are split into
single digits (`split_digits`), so arithmetic is done digit by digit.

Segment convention (methods.md section 1): the prompt x, the privileged
context p and the response y are encoded separately and their ids
concatenated. The model is trained with `add_dummy_prefix=False` and
`remove_extra_whitespaces=False`, so `encode` never invents or drops a
space: a segment that should be separated from the previous one carries its
own leading space in its text (the task renderers start p and y with " ").
Hence ids(x) + ids(p) + ids(y) decodes to exactly x + p + y, and ids(y) is
the same whatever precedes it.

Training is deterministic (one thread, no sentence sampling or shuffling,
BPE): the same corpus gives byte-identical model protos.
"""

import io
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


class Tokenizer:
    """Wraps a SentencePiece model proto with fixed special ids."""

    pad_id, eos_id, bos_id, unk_id = PAD_ID, EOS_ID, BOS_ID, UNK_ID

    def __init__(self, model_proto: bytes):
        """Builds the tokenizer from a serialized SentencePiece model proto."""
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        found = (self._sp.pad_id(), self._sp.eos_id(), self._sp.bos_id(), self._sp.unk_id())
        if found != (PAD_ID, EOS_ID, BOS_ID, UNK_ID):
            raise ValueError(
                f"model has special ids (pad, eos, bos, unk) = {found},"
                f" expected {(PAD_ID, EOS_ID, BOS_ID, UNK_ID)}"
            )

    @property
    def vocab_size(self) -> int:
        """Number of ids, special ids included."""
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Ids of one segment, without BOS/EOS.

        Args:
          text: the segment's text (see the module doc on leading spaces).

        Returns:
          A list of ids. Raises ValueError if a character has no piece (the
          tokenizer was trained on a corpus without it).
        """
        ids = self._sp.encode(text, out_type=int)
        if UNK_ID in ids:
            missing = sorted({c for c in text if self._sp.piece_to_id(c) == UNK_ID and c != " "})
            raise ValueError(
                f"characters {missing} of {text!r} are not in the "
                "tokenizer's vocabulary; retrain it on a corpus "
                "that contains them"
            )
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` up to the first EOS, ignoring pad and BOS ids."""
        kept = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                kept.append(i)
        return self._sp.decode(kept)

    def id_to_piece(self, i: int) -> str:
        """The piece string of an id (for inspection)."""
        return self._sp.id_to_piece(int(i))

    def to_bytes(self) -> bytes:
        """The serialized model proto."""
        return self._proto

    @classmethod
    def from_bytes(cls, model_proto: bytes) -> "Tokenizer":
        """Inverse of `to_bytes`."""
        return cls(model_proto)

    def save(self, path: str) -> None:
        """Writes the model proto to `path` (a standard .model file)."""
        with open(path, "wb") as f:
            f.write(self._proto)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """Reads a model proto written by `save`."""
        with open(path, "rb") as f:
            return cls(f.read())

    def __reduce__(self):
        # SentencePieceProcessor does not pickle; the proto bytes suffice.
        return (Tokenizer, (self._proto,))

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and self._proto == other._proto

    def __hash__(self) -> int:
        return hash(self._proto)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 64,
    *,
    max_piece_length: int = 8,
    hard_vocab_limit: bool = True,
) -> Tokenizer:
    """Trains a BPE tokenizer in memory.

    Args:
      texts: training sentences (segments as they will be encoded).
      vocab_size: total number of ids, the 4 special ids included. Must be at
        least the number of distinct characters + 4; larger values add merges.
      max_piece_length: longest piece in characters.
      hard_vocab_limit: False makes vocab_size an upper bound (a small corpus
        then gives fewer pieces instead of an error).

    Returns:
      The trained Tokenizer.
    """
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_tokenizer needs at least one non-empty text")
    n_chars = len(set("".join(texts)) - {" "}) + 1  # " " is stored as "▁"
    if vocab_size < n_chars + 4:
        raise ValueError(
            f"vocab_size={vocab_size} is below the {n_chars} "
            "distinct characters of the corpus + 4 special ids"
        )
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=out,
            vocab_size=vocab_size,
            model_type="bpe",
            split_digits=True,
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            character_coverage=1.0,
            byte_fallback=False,
            num_threads=1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentencepiece_length=max_piece_length,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            bos_id=BOS_ID,
            unk_id=UNK_ID,
            minloglevel=2,
            # Only when relaxed: the default leaves the model proto byte-identical.
            **({} if hard_vocab_limit else {"hard_vocab_limit": False}),
        )
    except RuntimeError as e:  # e.g. more pieces asked than the corpus has
        raise ValueError(f"SentencePiece training failed for vocab_size={vocab_size}: {e}") from e
    return Tokenizer(out.getvalue())
