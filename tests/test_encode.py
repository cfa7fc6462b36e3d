"""Tests for batch encoding and the resumable training stream."""

import dataclasses

import numpy as np
import pytest

from dopd_jax.data import encode, generated
from dopd_jax.data import streams as pipeline
from dopd_jax.data.generated import tasks
from dopd_jax.models import tokenizer as tok_lib

DOMAINS = tuple(tasks.DOMAINS)


@pytest.fixture(scope="module")
def tok():
    return tok_lib.train_tokenizer(
        generated.corpus_for_tokenizer(DOMAINS, 200, seed=0), vocab_size=64
    )


@pytest.fixture(scope="module")
def examples():
    return [ex for d in DOMAINS for ex in tasks.generate(d, 4, 2, misleading_fraction=0.5)]


@pytest.mark.parametrize("form", tasks.PRIVILEGED_FORMS)
def test_encode_prompts_left_pads(tok, examples, form):
    batch = encode.encode_prompts(
        examples, tok, form=form, max_prompt_len=24, max_priv_len=48, domains=DOMAINS
    )
    assert batch.prompt_BP.shape == (len(examples), 24)
    assert batch.priv_BQ.shape == batch.priv_mask_BQ.shape == (len(examples), 48)
    assert batch.prompt_BP.dtype == batch.priv_BQ.dtype == np.int32
    for b, ex in enumerate(examples):
        x, p = tok.encode(ex.prompt), tok.encode(ex.privileged[form])
        for ids, mask, want in (
            (batch.prompt_BP[b], batch.prompt_mask_BP[b], [2] + x),
            (batch.priv_BQ[b], batch.priv_mask_BQ[b], [2] + x + p),
        ):
            n = len(want)
            assert ids[-n:].tolist() == want and not ids[:-n].any()
            assert mask.tolist() == [False] * (len(ids) - n) + [True] * n
        if form == "none":
            assert batch.priv_BQ[b, -24:].tolist() == batch.prompt_BP[b].tolist()
    assert batch.domain_ids_B.tolist() == [DOMAINS.index(e.domain) for e in examples]


def test_encode_prompts_errors_name_the_row(tok, examples):
    long_row = dataclasses.replace(examples[1], prompt="Q: " + "1+" * 30 + "1=?")
    with pytest.raises(ValueError, match=r"row 1: prompt has \d+ tokens.*24"):
        encode.encode_prompts(
            [examples[0], long_row], tok, form="none", max_prompt_len=24, max_priv_len=64
        )
    with pytest.raises(ValueError, match=r"row 0: prompt \+ 'hints'.*limit 20"):
        encode.encode_prompts(examples[:1], tok, form="hints", max_prompt_len=20, max_priv_len=20)
    empty = dataclasses.replace(examples[0], prompt="")
    with pytest.raises(ValueError, match="row 1: the prompt '' encodes to no token"):
        encode.encode_prompts(
            [examples[0], empty], tok, form="none", max_prompt_len=24, max_priv_len=48
        )
    with pytest.raises(ValueError, match="row 0: domain 'arith'"):
        encode.encode_prompts(
            examples[:1], tok, form="none", max_prompt_len=24, max_priv_len=48, domains=("sort",)
        )
    with pytest.raises(ValueError, match="row 0: .*no privileged form 'hint'"):
        encode.encode_prompts(examples, tok, form="hint", max_prompt_len=24, max_priv_len=48)


def _sft(tok, exs, seed=0, **kw):
    kw = {"form": "answer", "p_dropout": 0.0, "max_len": 64} | kw
    batch, shown = encode.encode_sft(
        exs, tok, rng=np.random.default_rng(seed), return_shown=True, **kw
    )
    return _Shown(batch, shown)


class _Shown:
    """An SFTBatch plus the shown mask (attribute access to both)."""

    def __init__(self, batch, shown):
        self.batch, self.priv_shown_B = batch, shown

    def __getattr__(self, name):
        return getattr(self.batch, name)


def test_sft_mask_covers_exactly_response_and_eos(tok, examples):
    batch = _sft(tok, examples, form=tasks.PRIVILEGED_FORMS, p_dropout=0.4)
    for b, ex in enumerate(examples):
        inputs, targets = batch.inputs_BL[b], batch.targets_BL[b]
        mask = batch.loss_mask_BL[b]
        y = ex.priv_response if batch.priv_shown_B[b] else ex.response
        assert targets[mask].tolist() == tok.encode(y) + [tok.eos_id]
        valid = int(np.flatnonzero(targets)[-1]) + 1  # up to the EOS target
        assert inputs[0] == tok.bos_id and mask[valid - 1]
        assert not mask[valid:].any() and not targets[valid:].any()
        assert inputs[1:valid].tolist() == targets[: valid - 1].tolist()
        text = tok.decode(inputs[:valid].tolist() + [targets[valid - 1]])
        assert text.startswith(ex.prompt) and text.endswith(y)


def test_sft_privileged_choice(tok, examples):
    shown = _sft(tok, examples, p_dropout=0.0)
    assert shown.priv_shown_B.all()
    for b, ex in enumerate(examples):  # y follows p, misleading or not
        masked = shown.targets_BL[b][shown.loss_mask_BL[b]].tolist()
        assert masked == tok.encode(ex.priv_response) + [1]
    for batch in (_sft(tok, examples, p_dropout=1.0), _sft(tok, examples, form="none")):
        for b, ex in enumerate(examples):
            masked = batch.targets_BL[b][batch.loss_mask_BL[b]].tolist()
            assert masked == tok.encode(ex.response) + [1]
    assert not _sft(tok, examples, p_dropout=1.0).priv_shown_B.any()


def test_sft_dropout_rate_and_determinism(tok):
    exs = tasks.generate("sort", 400, 0)
    a = _sft(tok, exs, seed=1, p_dropout=0.3)
    assert abs((1 - a.priv_shown_B.mean()) - 0.3) < 0.1
    b = _sft(tok, exs, seed=1, p_dropout=0.3)
    assert all(
        np.array_equal(getattr(a.batch, f.name), getattr(b.batch, f.name))
        for f in dataclasses.fields(a.batch)
    )


def test_sft_errors_name_the_row(tok, examples):
    with pytest.raises(ValueError, match=r"row 0: SFT input.*limit 10"):
        _sft(tok, examples, max_len=10)
    with pytest.raises(ValueError, match="p_dropout"):
        _sft(tok, examples, p_dropout=-0.1)
    with pytest.raises(ValueError, match="no privileged form 'nope'"):
        _sft(tok, examples, form=("answer", "nope"), p_dropout=0.0)


def test_stream_resumes_exactly():
    kw = dict(misleading_fraction=0.3, difficulty={"arith": {"n_ops": 3}})
    first = pipeline.TrainStream(DOMAINS, 12, seed=4, **kw)
    for _ in range(3):
        next(first)
    state = first.get_state()
    expected = [next(first) for _ in range(2)]
    fresh = pipeline.TrainStream(DOMAINS, 12, seed=4, **kw)
    fresh.set_state(state)
    assert [next(fresh) for _ in range(2)] == expected
    assert fresh.batch(3) == expected[0]
    assert pipeline.TrainStream(DOMAINS, 12, seed=5).batch(3) != expected[0]
    with pytest.raises(ValueError, match="seed"):
        pipeline.TrainStream(DOMAINS, 12, seed=5).set_state(state)


def test_stream_process_slices_are_disjoint_and_complete():
    whole = pipeline.TrainStream(DOMAINS, 16, seed=0).batch(7)
    parts = [
        pipeline.TrainStream(DOMAINS, 16, seed=0, process_index=i, process_count=4).batch(7)
        for i in range(4)
    ]
    assert [len(p) for p in parts] == [4] * 4
    assert sum(parts, []) == whole
    assert len({e.prompt for e in whole}) == 16
    with pytest.raises(ValueError, match="divisible"):
        pipeline.TrainStream(DOMAINS, 10, seed=0, process_count=4)


def test_stream_domain_mix():
    only_sort = pipeline.TrainStream(DOMAINS, 32, 0, mix=[0, 1, 0]).batch(0)
    assert {e.domain for e in only_sort} == {"sort"}
    mixed = sum(
        (pipeline.TrainStream(DOMAINS, 64, 0, mix=[3, 1, 0]).batch(i) for i in range(4)), []
    )
    share = sum(e.domain == DOMAINS[0] for e in mixed) / len(mixed)
    assert abs(share - 0.75) < 0.1 and all(e.domain != DOMAINS[2] for e in mixed)
    assert all(tasks.split_of(e.domain, e.prompt) == "train" for e in mixed)
    with pytest.raises(ValueError, match="mix"):
        pipeline.TrainStream(DOMAINS, 8, 0, mix=[1, 1])
    with pytest.raises(ValueError, match="not among"):
        pipeline.TrainStream(["sort"], 8, 0, difficulty={"arith": {"n_ops": 3}})


def test_eval_set_is_fixed_and_held_out():
    a = pipeline.eval_set("arith", "hard", n=200, seed=1)
    assert a == pipeline.eval_set("arith", "hard", n=200, seed=1)
    assert {tasks.split_of("arith", e.prompt) for e in a} == {"hard"}
    assert len(pipeline.eval_set("sort")) == 1000
