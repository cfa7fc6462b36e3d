"""Your own prompts: the whole pipeline on JSONL files.

Each line of the files is one JSON object: ``prompt`` (required), ``answer``,
``privileged`` (a string, or an object of named forms), ``response`` (the
gold solution) and ``domain``. The runner writes them once as a TFDS dataset
under ``WORKDIR/data``, trains a SentencePiece tokenizer on their text, SFT-trains
a teacher on x (+ p) -> response, warms up a student the same way, distils it
with each configured method, and evaluates every method on the test file (and
the optional second one) with the configured verifier.

Hypothesis: as in ``privilege_illusion.py``, on your data.

Run (paths are required):
  python -m dopd_jax.run --config experiments/jsonl_task.py --workdir runs/mine \
      --config.task.train_path=train.jsonl --config.task.test_path=test.jsonl \
      --config.task.verifier=marker
Smoke (about a minute; the tests run it on files they write):
  python -m dopd_jax.run --config experiments/jsonl_task.py:smoke --workdir /tmp/jsonl ...

Verifiers: ``exact``, ``marker`` (text after the last ``A:``), ``last_number``,
``boxed``, or ``package.module:FUNCTION``. The privileged form of a string
``privileged`` field is ``privileged``.
"""

from dopd_jax.pipeline import config as config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    t = c.task
    t.source, t.priv_form, t.sft_forms, t.verifier = (
        "jsonl",
        "privileged",
        ("privileged",),
        "marker",
    )
    t.max_prompt_len, t.max_priv_len = 64, 128
    c.tokenizer.vocab_size, c.tokenizer.hard_vocab_limit = 256, False
    c.teacher.max_len = c.student.max_len = 192
    c.distill.max_new_tokens = 64
    c.distill.methods = ("opd", "privt", "opsd", "dopd")
    c.eval.avg_k = 4  # sampled avg@4 per evaluation set, next to greedy accuracy
    if arg == "smoke":
        config_lib.shrink_to_smoke(c)
        c.distill.methods = ("opd", "dopd")
    elif arg:
        raise ValueError(f"unknown argument {arg!r}; valid: smoke")
    return c
