"""The Hugging Face tokenizer (``tokenizer.json`` plus its side files) on tiny BPEs."""

import json

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from dopd_jax.models.hf_tokenizer import HFTokenizer  # noqa: E402


def _tokenizer_dir(directory, **files):
    """Trains a tiny Metaspace BPE, saves it with the given side files."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    tok.decoder = tokenizers.decoders.Metaspace()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=60, special_tokens=["<pad>", "</s>", "<s>", "<unk>"]
    )
    tok.train_from_iterator(
        ["the cat sat on the mat", "a cat and a hat", "the mat is flat"], trainer
    )
    tok.save(str(directory / "tokenizer.json"))
    for name, content in files.items():
        (directory / f"{name}.json").write_text(json.dumps(content))
    return directory


def test_hf_tokenizer_interface(tmp_path):
    _tokenizer_dir(
        tmp_path,
        tokenizer_config=dict(
            eos_token="</s>", bos_token="<s>", pad_token={"content": "<pad>", "special": True}
        ),
    )
    tok = HFTokenizer.from_file(str(tmp_path))
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert tok.vocab_size == HFTokenizer.from_file(str(tmp_path / "tokenizer.json")).vocab_size
    assert 10 < tok.vocab_size <= 60
    ids = tok.encode("the cat sat on a flat mat")
    assert ids and not {0, 1, 2} & set(ids)
    assert tok.decode(ids) == "the cat sat on a flat mat"
    assert tok.decode([2] + ids[:2] + [0] + ids[2:] + [1] + ids) == tok.decode(ids)
    assert tok.decode(np.array([[1] + ids])) == ""
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        tok.encode("the dog")


def test_hf_tokenizer_special_id_sources(tmp_path):
    _tokenizer_dir(
        tmp_path,
        special_tokens_map=dict(eos_token="</s>"),
        config=dict(pad_token_id=0, eos_token_id=2),
    )
    tok = HFTokenizer.from_file(str(tmp_path))
    # special_tokens_map.json wins over config.json; nothing defines a BOS.
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (1, 0, None)
    (tmp_path / "config.json").write_text(json.dumps(dict(eos_token_id=[1, 2])))
    with pytest.raises(ValueError, match="no pad token.*pass pad_token="):
        HFTokenizer.from_file(str(tmp_path))
    assert HFTokenizer.from_file(str(tmp_path), pad_token="<s>").pad_id == 2
    (tmp_path / "special_tokens_map.json").unlink()
    with pytest.raises(ValueError, match="eos_token_id.*lists several"):
        HFTokenizer.from_file(str(tmp_path), pad_token=0)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(dict(eos_token="<eos>", pad_token="<pad>"))
    )
    with pytest.raises(ValueError, match="tokenizer_config.json.*'<eos>'"):
        HFTokenizer.from_file(str(tmp_path))
    with pytest.raises(ValueError, match="tokenizer.json not found"):
        HFTokenizer.from_file(str(tmp_path / "sub"))
