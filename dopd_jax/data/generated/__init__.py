"""Generated privileged-information task families (arith, sort, linear).

    problem  traces, problems, seeded draws shared by the families
    arith / sorting / linear   the families
    tasks    DOMAINS, PRIVILEGED_FORMS, splits, generate, verify

Examples are drawn on demand from their index (a pure function of seed,
domain, split and index), so the training stream is infinite and needs no
files; ``python -m dopd_jax.data.prepare --source arith`` writes a finite
sample as a TFDS dataset when one is wanted.
"""

from dopd_jax.data.generated.tasks import (
    DOMAINS,
    PRIVILEGED_FORMS,
    SPLITS,
    draw,
    extract_answer,
    generate,
    get_domain,
    split_of,
    verify,
)

SFT_FORMS = ("hints", "exec_hints", "answer")  # privileged forms shown during SFT


def corpus_for_tokenizer(domains, n: int, seed: int) -> list[str]:
    """Texts covering prompts, every privileged form and both solutions.

    Args:
      domains: domain names.
      n: examples per domain (half of them misleading, so wrong strategies
        are covered too).
      seed: data seed.

    Returns:
      A list of segment texts.
    """
    texts = []
    for domain in domains:
        for ex in generate(domain, n, seed, misleading_fraction=0.5):
            texts.append(ex.prompt)
            texts.extend(ex.privileged[f] for f in PRIVILEGED_FORMS if ex.privileged[f])
            texts.extend((ex.response, ex.priv_response))
    return texts


__all__ = [
    "DOMAINS",
    "PRIVILEGED_FORMS",
    "SFT_FORMS",
    "SPLITS",
    "corpus_for_tokenizer",
    "draw",
    "extract_answer",
    "generate",
    "get_domain",
    "split_of",
    "verify",
]
