"""Tests for the generated task domains, splits and verifiers."""

import math
import re

import pytest

from dopd_jax.data import generated
from dopd_jax.data.generated import tasks
from dopd_jax.models import tokenizer as tok_lib

DOMAINS = sorted(tasks.DOMAINS)


@pytest.fixture(scope="module")
def tok():
    return tok_lib.train_tokenizer(
        generated.corpus_for_tokenizer(DOMAINS, 200, seed=0), vocab_size=64
    )


@pytest.mark.parametrize("domain", DOMAINS)
def test_generate_is_deterministic_per_seed(domain):
    a = tasks.generate(domain, 50, seed=3, misleading_fraction=0.3)
    assert a == tasks.generate(domain, 50, seed=3, misleading_fraction=0.3)
    assert a != tasks.generate(domain, 50, seed=4, misleading_fraction=0.3)


@pytest.mark.parametrize("domain", DOMAINS)
def test_splits_are_disjoint_and_routed_by_hash(domain):
    prompts = {
        s: {e.prompt for e in tasks.generate(domain, 1000, 0, split=s)} for s in tasks.SPLITS
    }
    assert len(prompts["test"]) == len(prompts["hard"]) == 1000  # distinct
    assert not prompts["train"] & prompts["test"]
    assert not prompts["train"] & prompts["hard"]
    assert not prompts["test"] & prompts["hard"]
    for split, ps in prompts.items():
        assert {tasks.split_of(domain, p) for p in ps} == {split}


@pytest.mark.parametrize("domain", DOMAINS)
def test_hard_is_harder_with_the_same_token_lengths(domain, tok):
    test = tasks.generate(domain, 1000, 0, split="test")
    hard = tasks.generate(domain, 1000, 0, split="hard")
    hard_min = tasks.DOMAINS[domain].difficulty_cls().hard_min
    assert min(e.hardness for e in hard) >= hard_min
    assert sum(e.hardness for e in test) / len(test) < hard_min - 0.5
    for field in ("prompt", "response"):

        def max_len(exs):
            return max(len(tok.encode(getattr(e, field))) for e in exs)

        assert max_len(hard) == max_len(test), field


def _check_correct(ex):
    """Independent check of the reference answer from the prompt alone."""
    if ex.domain == "arith":
        assert str(eval(ex.prompt[3:-2])) == ex.answer  # Python precedence
    elif ex.domain == "linear":
        a, sign, b, c = re.fullmatch(r"Q: (\d+)\*x([+-])(\d+)=(\d+)", ex.prompt).groups()
        x = int(ex.answer)
        assert int(a) * x + (int(b) if sign == "+" else -int(b)) == int(c)
    else:
        assert ex.answer == "".join(sorted(ex.prompt.split()[1:]))


def _check_follows_hint(ex):
    """priv_solution executes the strategy that the hints describe."""
    work = ex.priv_response.split(" A: ")[0].strip()
    plan = ex.privileged["hints"].removeprefix(" hint: ")
    values = ex.privileged["exec_hints"].removeprefix(" hint: ")
    if ex.domain == "sort":
        digits = [int(d) for d in work.split()]
        assert digits == sorted(digits, reverse=plan == "largest first")
        assert " ".join(map(str, digits)).startswith(values)
    else:
        for letter, value in zip("abcdef", values.split(", ")):
            plan = re.sub(rf"\b{letter}\b", value, plan)
        assert plan == work
    assert ex.privileged["answer"] == f" hint: {ex.priv_response.split()[-1]}"


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_form_renders_and_the_solution_verifies(domain):
    for ex in tasks.generate(domain, 300, 1, misleading_fraction=0.5):
        assert set(ex.privileged) == set(tasks.PRIVILEGED_FORMS)
        assert ex.privileged["none"] == ""
        for form in tasks.PRIVILEGED_FORMS[1:]:
            assert ex.privileged[form].startswith(" hint: ")
        assert not ex.prompt.startswith(" ") and ex.response.startswith(" ")
        assert ex.response.endswith(f" A: {ex.answer}")
        assert tasks.verify(ex, ex.response)
        _check_correct(ex)
        _check_follows_hint(ex)
        if ex.misleading:
            assert not tasks.verify(ex, ex.priv_response)
            assert ex.privileged["answer"] != f" hint: {ex.answer}"
        else:
            assert ex.priv_response == ex.response


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_misleading_fraction_is_respected(fraction):
    n = 2000
    exs = tasks.generate("arith", n, 5, misleading_fraction=fraction)
    got = sum(e.misleading for e in exs) / n
    assert abs(got - fraction) <= 4 * math.sqrt(fraction * (1 - fraction) / n)


def test_difficulty_knobs():
    exs = tasks.generate("arith", 50, 0, difficulty={"n_ops": 3})
    assert all(len(e.response.split("=")) == 4 for e in exs)
    exs = tasks.generate("sort", 50, 0, difficulty={"n_items": 4})
    assert all(len(e.answer) == 4 for e in exs)
    exs = tasks.generate("linear", 50, 0, difficulty={"x_digits": 1})
    assert all(1 <= int(e.answer) <= 9 for e in exs)


@pytest.mark.parametrize(
    "text, want",
    [
        (" 37*4=148 148+18=166 A: 166", "166"),
        (" A: 166 A: 12", "166"),  # first answer wins
        (" A: 166xyz 7", "166"),  # trailing garbage ignored
        (" A:166", "166"),
        (" A: -5", "-5"),
        (" 37*4=148 148+18=166", None),  # no answer field
        (" A: ", None),
        (" A: x12", None),
        ("", None),
    ],
)
def test_extract_answer_edge_cases(text, want):
    assert tasks.extract_answer("arith", text) == want


def test_extract_answer_sort_keeps_leading_zeros():
    assert tasks.extract_answer("sort", " 0 1 2 A: 012 3") == "012"
    assert tasks.extract_answer("sort", " A: -12") is None


def test_bad_names_raise_listing_valid_ones():
    with pytest.raises(ValueError, match="valid: .*arith"):
        tasks.generate("chess", 1, 0)
    with pytest.raises(ValueError, match="valid: .*exec_hints"):
        tasks.check_form("summary")
    with pytest.raises(ValueError, match="valid: .*hard"):
        tasks.generate("arith", 1, 0, split="dev")
    with pytest.raises(ValueError, match="unknown difficulty field.*n_opz"):
        tasks.generate("arith", 1, 0, difficulty={"n_opz": 3})
    with pytest.raises(ValueError, match="n_ops"):
        tasks.generate("arith", 1, 0, difficulty={"n_ops": 1})
    with pytest.raises(ValueError, match="misleading_fraction"):
        tasks.generate("arith", 1, 0, misleading_fraction=1.5)


def test_unsatisfiable_hard_split_raises():
    with pytest.raises(ValueError, match="hard_min"):
        tasks.generate("sort", 1, 0, split="hard", difficulty={"n_items": 3, "hard_min": 3})


def test_config_difficulty_strings_parse_and_feed_an_ood_set():
    from dopd_jax.data import sources

    assert sources.parse_difficulty("n_ops=3, ops=+*") == {"n_ops": 3, "ops": "+*"}
    with pytest.raises(ValueError, match="expected field=value items, got 'n_ops'"):
        sources.parse_difficulty("n_ops")
    spec = sources.TaskSpec(difficulty="n_ops=2", ood_difficulty="n_ops=3", n_test=20, n_hard=5)
    data = sources.generated_task(spec, 0)
    assert sorted(data.eval_sets) == ["hard", "ood", "test"]
    assert all(ex.prompt.count("=") == 1 for ex in data.eval_sets["test"])
    ops = [sum(ex.prompt.count(o) for o in "+-*") for ex in data.eval_sets["ood"]]
    assert ops == [3] * 20  # three operations in every ood prompt
    with pytest.raises(ValueError, match="ood_difficulty: one domain only"):
        sources.generated_task(sources.TaskSpec(domain="arith,sort", ood_difficulty="n_ops=3"), 0)


def test_each_domain_of_a_mixed_task_takes_its_own_difficulty():
    from dopd_jax.data import sources

    assert sources.domain_difficulty("n_items=4", ("sort", "linear")) == {
        "sort": {"n_items": 4},
        "linear": {"n_items": 4},
    }
    assert sources.domain_difficulty("", ("sort",)) == {}
    text = "arith: n_ops=3, max_digits=1; sort:n_items=4"
    spec = sources.TaskSpec(domain="arith,sort,linear", difficulty=text, n_test=20, n_hard=5)
    data = sources.generated_task(spec, 0)
    arith = data.eval_sets["test_arith"]
    assert all(sum(ex.prompt.count(o) for o in "+-*") == 3 for ex in arith)
    assert {len(ex.prompt.split()) - 1 for ex in data.eval_sets["test_sort"]} == {4}
    trained = data.train(64, 0).batch(0)
    assert {len(ex.prompt.split()) - 1 for ex in trained if ex.domain == "sort"} == {4}
    assert (
        sources.generated_task(
            sources.TaskSpec(domain="arith,sort,linear", n_test=20, n_hard=5), 0
        ).eval_sets["test_linear"]
        == data.eval_sets["test_linear"]
    )  # defaults where unnamed
    for bad, message in [
        ("code:n_ops=3", r"domain one of the task's \['arith', 'sort', 'linear'\]"),
        ("arith:n_ops=3;arith:n_ops=2", "domain 'arith' appears twice"),
        ("sort:n_opz=3", "n_opz"),
    ]:
        with pytest.raises(ValueError, match=message):
            sources.generated_task(
                sources.TaskSpec(domain="arith,sort,linear", difficulty=bad, n_test=5), 0
            )
