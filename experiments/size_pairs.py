"""Teacher/student size pairs (DOPD paper, Table 3): does DOPD's edge hold across scales?

Each variant trains its own teacher and student init at the named sizes
(``config.SIZES``: xs d48x2, s d64x2, m d96x3, l d128x4) and distils with
vanilla OPD, Priv.T->S and DOPD. The default pair is the main experiment's.

  python -m dopd_jax.sweep --config experiments/size_pairs.py --workdir runs/sizes
  python -m dopd_jax.run --config experiments/size_pairs.py:pair=l-s,smoke --workdir /tmp/sp
"""

from dopd_jax.pipeline import config as config_lib

PAIRS = ("m-s", "l-s", "m-xs", "l-m")  # teacher-student
VARIANTS = tuple(f"pair={p}" for p in PAIRS)


def get_config(arg=None):
    args, smoke = config_lib.parse_arg(arg, pair=PAIRS)
    teacher, student = args.get("pair", PAIRS[0]).split("-")
    c = config_lib.base_config()
    c.teacher.model = config_lib.sized(teacher)
    c.student.model = config_lib.sized(student)
    c.distill.methods = ("opd", "privt", "dopd")
    if smoke:
        config_lib.shrink_to_smoke(c)
        c.distill.methods = ("dopd",)
    return c
