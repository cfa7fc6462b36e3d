"""Tests for the in-memory SentencePiece tokenizer and its segment rule."""

import hashlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

from dopd_jax.data import generated
from dopd_jax.data.generated import tasks
from dopd_jax.models import tokenizer as tok_lib

DOMAINS = sorted(tasks.DOMAINS)


@pytest.fixture(scope="module")
def corpus():
    return generated.corpus_for_tokenizer(DOMAINS, 200, seed=0)


@pytest.fixture(scope="module")
def tok(corpus):
    return tok_lib.train_tokenizer(corpus, vocab_size=64)


@pytest.fixture(scope="module")
def examples():
    return [ex for d in DOMAINS for ex in tasks.generate(d, 100, 7, misleading_fraction=0.5)]


def test_training_is_deterministic(corpus, tok):
    again = tok_lib.train_tokenizer(corpus, vocab_size=64)
    assert again.to_bytes() == tok.to_bytes()
    # A fresh interpreter (new hash seed, fresh library state) agrees too.
    code = (
        "import hashlib; from dopd_jax.models import tokenizer as t;"
        "from dopd_jax.data import generated as g;"
        f"c = g.corpus_for_tokenizer({DOMAINS!r}, 200, seed=0);"
        "print(hashlib.sha256(t.train_tokenizer(c, 64).to_bytes())"
        ".hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out == hashlib.sha256(tok.to_bytes()).hexdigest()


def test_special_ids_and_vocab_size(tok):
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 64
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "</s>", "<s>", "<unk>"]
    ids = tok.encode("Q: 37*4+18=?")
    assert ids and min(ids) > 3  # no BOS/EOS added, nothing unknown


def test_digits_are_single_tokens(tok):
    ids = tok.encode(" 9876543210")
    assert [tok.id_to_piece(i) for i in ids] == ["▁"] + list("9876543210")


def test_decode_stops_at_eos_and_drops_pad_and_bos(tok):
    body = tok.encode(" 12 A: 3")
    ids = [0, 0, 2] + body + [1] + tok.encode(" 99")
    assert tok.decode(ids) == " 12 A: 3"
    assert tok.decode(np.array(ids, np.int32)) == " 12 A: 3"
    assert tok.decode([]) == ""


def test_segments_concatenate_exactly(tok, examples):
    for ex in examples:
        for form in tasks.PRIVILEGED_FORMS:
            x, p = ex.prompt, ex.privileged[form]
            for y in (ex.response, ex.priv_response):
                ids = tok.encode(x) + tok.encode(p) + tok.encode(y)
                assert tok.decode(ids) == x + p + y
                # Segment boundaries fall on spaces, so joint tokenization agrees:
                # y's ids do not depend on what precedes them.
                assert tok.encode(x + p + y) == ids


def test_round_trip_verifies_for_all_domains_and_forms(tok, examples):
    for ex in examples:
        decoded = tok.decode(tok.encode(ex.response) + [tok.eos_id, 5, 6])
        assert decoded == ex.response
        assert tasks.verify(ex, decoded)
        assert tok.decode(tok.encode(ex.priv_response)) == ex.priv_response
        for form in tasks.PRIVILEGED_FORMS:
            p = ex.privileged[form]
            assert tok.decode(tok.encode(p)) == p


def test_serialization(tok, tmp_path):
    assert tok_lib.Tokenizer.from_bytes(tok.to_bytes()) == tok
    path = str(tmp_path / "tok.model")
    tok.save(path)
    loaded = tok_lib.Tokenizer.load(path)
    assert loaded == tok and loaded.encode(" A: 5") == tok.encode(" A: 5")
    assert pickle.loads(pickle.dumps(tok)).encode(" A: 5") == tok.encode(" A: 5")


def test_errors(tok, corpus):
    with pytest.raises(ValueError, match=r"\['#'\]"):
        tok.encode("Q: 1#2")
    with pytest.raises(ValueError, match="distinct characters"):
        tok_lib.train_tokenizer(corpus, vocab_size=20)
    with pytest.raises(ValueError, match="vocab_size=4000"):
        tok_lib.train_tokenizer(corpus, vocab_size=4000)
    with pytest.raises(ValueError, match="non-empty"):
        tok_lib.train_tokenizer(["", ""])
