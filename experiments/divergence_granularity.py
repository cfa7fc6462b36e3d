"""Objective x granularity under equal weights (DOPD paper, Table 7).

DOPD with one divergence for every regime ({FKL, RKL, JS}) computed at one
granularity ({sampled token, top-K, full vocabulary}), weight 1 everywhere,
against the adaptive default. JS has no single-sample form here, so its
sampled cell is absent (the config check refuses it).

  python -m dopd_jax.sweep --config experiments/divergence_granularity.py --workdir runs/div_gran
  python -m dopd_jax.run --config experiments/divergence_granularity.py:smoke --workdir /tmp/dg
"""

from dopd_jax.pipeline import config as config_lib

PAIRED_AGAINST = "dopd"  # the sweep also reports each cell minus DOPD (adaptive), seed by seed

OBJECTIVES = ("fkl", "rkl", "jsd")
GRANULARITIES = ("sampled", "topk", "full")


def get_config(arg=None):
    _, smoke = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    runs = {}
    for obj in OBJECTIVES:
        for gran in GRANULARITIES:
            if obj == "jsd" and gran == "sampled":
                continue
            runs[f"dopd_{obj}_{gran}"] = dict(
                method="dopd",
                objective=obj,
                granularity=gran,
                adaptive_weights=False,
                label=f"{obj.upper()} {gran}",
            )
    config_lib.add_variants(c, **runs)
    c.distill.methods = ("dopd", *runs)
    if smoke:
        config_lib.shrink_to_smoke(c)
        c.distill.methods = ("dopd_rkl_sampled", "dopd_jsd_topk")
    return c
