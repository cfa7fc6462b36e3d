"""Continual learning: distilling a sequence of domains, and what is forgotten.

One teacher and one student init cover three generated domains (arith ->
sort -> linear). Each method distils the domains one after another, each
stage starting from the previous stage's student (``distill.init``) and
seeing only its domain's prompts (``distill.domains``). Every stage is
evaluated on every domain (``test_<d>``), so a row's earlier-domain columns
measure forgetting against the stage that trained them.

  python -m dopd_jax.sweep --config experiments/continual.py --workdir runs/continual
  python -m dopd_jax.run --config experiments/continual.py:smoke --workdir /tmp/cont
"""

from dopd_jax.pipeline import config as config_lib

DOMAINS = ("arith", "sort", "linear")
METHODS = ("opd", "dopd")


def _stages(methods, domains, steps: int) -> dict:
    runs = {}
    for m in methods:
        previous = ""
        for d in domains:
            runs[f"{m}_{d}"] = dict(
                method=m, label=f"{m.upper()} ..{d}", domains=(d,), init=previous, steps=steps
            )
            previous = f"run:{m}_{d}"
    return runs


def get_config(arg=None):
    _, smoke = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    domains = DOMAINS[:2] if smoke else DOMAINS
    c.task.domain = ",".join(domains)
    c.task.max_prompt_len = 24
    c.task.max_priv_len = 40
    if smoke:
        config_lib.shrink_to_smoke(c)
    runs = _stages(METHODS, domains, c.distill.steps)
    config_lib.add_variants(c, **runs)
    c.distill.methods = tuple(runs)
    c.distill.eval_every = 0
    return c
