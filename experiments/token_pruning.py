"""Token-pruning diagnosis (DOPD paper, Fig. 4): which tokens does OPD need?

Vanilla OPD dropping 20% of the valid response tokens from its loss, chosen
at random, or those with the lowest / highest privilege gap
A = |log T(y|x,p) - log S(y|x,p)| (quantiles over the whole batch). If
high-gap tokens carry the transfer, dropping them hurts most; if low-gap
tokens are noise, dropping them costs nothing.

  python -m dopd_jax.sweep --config experiments/token_pruning.py --workdir runs/pruning
  python -m dopd_jax.run --config experiments/token_pruning.py:smoke --workdir /tmp/prune
"""

from dopd_jax.pipeline import config as config_lib

PAIRED_AGAINST = "opd"  # the sweep also reports each pruned run minus full OPD, seed by seed

RUNS = {
    f"opd_prune_{mode}": dict(
        method="opd", prune=mode, prune_fraction=0.2, label=f"OPD -20% {mode}"
    )
    for mode in ("random", "low_gap", "high_gap")
}


def get_config(arg=None):
    _, smoke = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    config_lib.add_variants(c, **RUNS)
    c.distill.methods = ("opd", *RUNS)
    if smoke:
        config_lib.shrink_to_smoke(c)
        c.distill.methods = ("opd_prune_high_gap",)
    return c
