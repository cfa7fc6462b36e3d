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

from dopd_jax.pipeline import config as config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    if arg == "smoke":
        config_lib.shrink_to_smoke(c)
    elif arg:
        raise ValueError(f"unknown argument {arg!r}; valid: smoke")
    return c
