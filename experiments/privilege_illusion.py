"""Main experiment: does DOPD's routing beat vanilla OPD when privilege misleads?

Hypothesis (DOPD, arXiv 2606.30626): a privileged teacher's confidence mixes
real skill with privileged information the deployed student never sees.
Routing each token by the gap between the privileged teacher and the
privileged student (methods.md section 4) should distil the skill and not the
illusion, and so beat vanilla OPD, Priv.T->S and OPSD from the same student
initialisation, seeds and budget.

Run (about 15 minutes on 2 CPU cores, teacher training included):
  python -m dopd_jax.run --config experiments/privilege_illusion.py --workdir runs/main
Smoke (about a minute, used by the tests):
  python -m dopd_jax.run --config experiments/privilege_illusion.py:smoke --workdir /tmp/smoke

Expected result: see README.md ("Main experiment"), which records the table
this config produced and what the diagnostics showed.
"""
from dopd_jax import config as config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    if arg == "smoke":
        shrink_to_smoke(c)
    elif arg:
        raise ValueError(f"unknown argument {arg!r}; valid: smoke")
    return c


def shrink_to_smoke(c):
    """Shrinks any config of this family to run in about a minute on one core."""
    c.teacher.model = config_lib.model_config(32, 1, 2, 1, 64)
    c.student.model = config_lib.model_config(32, 1, 2, 1, 64)
    c.teacher.steps = 20
    c.student.steps = 10
    c.distill.steps = 4
    c.distill.log_every = 2
    c.distill.eval_every = 4
    c.distill.eval_n = 16
    c.distill.batch_prompts = 4
    c.distill.n_samples = 2
    c.distill.max_new_tokens = 24
    c.task.n_test = 32
    c.task.n_hard = 32
    c.tokenizer.corpus_size = 500
    c.eval.batch_size = 32
