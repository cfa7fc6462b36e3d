"""Which token regimes carry DOPD's signal (DOPD paper, Table 6)?

DOPD trained on a subset of its four regimes (methods.md section 4: LH, LL
large/small-gap tokens the teacher is surer of; HT, HS high-gap tokens routed
to the teacher / the privileged student), each with the paper's adaptive
weights and with weight 1 everywhere (``adaptive_weights=False``). Untrained
regimes get no loss, so each row says what its regimes add alone.

  python -m dopd_jax.sweep --config experiments/token_types.py --workdir runs/token_types
  python -m dopd_jax.run --config experiments/token_types.py:smoke --workdir /tmp/tt
"""

from dopd_jax.pipeline import config as config_lib

PAIRED_AGAINST = "opd"  # the sweep also reports each subset minus vanilla OPD, seed by seed

SUBSETS = {
    "HT": ("HT",),
    "HT+HS": ("HT", "HS"),
    "HT+LH": ("HT", "LH"),
    "HT+HS+LH": ("HT", "HS", "LH"),
    "all": ("LH", "LL", "HT", "HS"),
}


def get_config(arg=None):
    _, smoke = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    runs = {}
    for name, regimes in SUBSETS.items():
        # HT alone has weight 1 either way (the strong regime): one run, not two
        # (the full-size pair gave identical metrics at every step).
        for adaptive in (True,) if regimes == ("HT",) else (True, False):
            key = f"dopd_{name.replace('+', '_')}" + ("" if adaptive else "_eq")
            label = f"DOPD {name}" + ("" if adaptive else " (w=1)")
            runs[key] = dict(method="dopd", regimes=regimes, adaptive_weights=adaptive, label=label)
    config_lib.add_variants(c, **runs)
    c.distill.methods = ("opd", *runs)
    if smoke:
        config_lib.shrink_to_smoke(c)
        c.distill.methods = ("dopd_HT", "dopd_all_eq")
    return c
