"""Sensitivity of DOPD to its two light-regime weights (DOPD paper, Fig. 10).

``beta_light`` weighs LH and HS, ``beta_weak`` weighs LL (methods.md
section 4; defaults 0.6 and 0.3). One run per point of a small grid, each
weight varied with the other at its default.

  python -m dopd_jax.sweep --config experiments/beta_sensitivity.py --workdir runs/beta
  python -m dopd_jax.run --config experiments/beta_sensitivity.py:smoke --workdir /tmp/beta
"""

from dopd_jax.pipeline import config as config_lib

# the sweep also reports each weight minus the defaults (0.6, 0.3), seed by seed
PAIRED_AGAINST = "dopd"

BETA_LIGHT = (0.2, 0.4, 0.6, 0.8, 1.0)
BETA_WEAK = (0.1, 0.3, 0.5)


def _runs() -> dict:
    runs = {
        f"dopd_bl{round(10 * b)}": dict(method="dopd", beta_light=b, label=f"beta_light={b:g}")
        for b in BETA_LIGHT
        if b != 0.6
    }
    runs.update(
        {
            f"dopd_bw{round(10 * b)}": dict(method="dopd", beta_weak=b, label=f"beta_weak={b:g}")
            for b in BETA_WEAK
            if b != 0.3
        }
    )
    return runs


def get_config(arg=None):
    _, smoke = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    runs = _runs()
    config_lib.add_variants(c, **runs)
    c.distill.methods = ("dopd", *runs)
    if smoke:
        config_lib.shrink_to_smoke(c)
        c.distill.methods = ("dopd_bl10",)
    return c
