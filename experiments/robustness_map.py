"""Where DOPD helps, where it collapses, and why: a robustness map.

Variants cross the share of misleading hints (``task.misleading_fraction``:
the teacher is trained to follow hints, so a misleading hint makes the
privileged teacher confidently wrong) with the student's size. In each, from
one student init:

  opd                 vanilla OPD (the reference)
  dopd                DOPD as specified
  dopd_hs_teacher     HS routed to the teacher instead of the privileged student
  dopd_frozen         the privileged student frozen at its init
  dopd_ema            the privileged student an EMA of the live weights
  dopd_fixed_gap      a fixed gap threshold (1 nat) instead of the batch mean A_bar
  dopd_skill          skill-gap routing (HT needs T+p and plain T to beat the student)
  dopd_wrong_hint     wrong-hint contrast (down-weights hint-copying tokens)
  dopd_early_stop     the collapse monitor ends the run (HS > 30% for 3 logs)

The diagnostics (regime shares, A_bar, KL to each teacher, entropy) say why a
variant collapsed; the sweep's routing figure shows them over steps.

  python -m dopd_jax.sweep --config experiments/robustness_map.py --workdir runs/robustness
  python -m dopd_jax.run --config experiments/robustness_map.py:mislead=0.5,smoke --workdir /tmp/r
"""

from dopd_jax.pipeline import config as config_lib

MISLEAD = ("0", "0.25", "0.5")
STUDENTS = ("small", "base")
VARIANTS = tuple(f"mislead={m},student={s}" for s in STUDENTS for m in MISLEAD)

RUNS = dict(
    dopd_ema=dict(method="dopd", priv_student="ema", label="DOPD priv_student=ema"),
    dopd_fixed_gap=dict(method="dopd", gap_threshold=1.0, label="DOPD gap threshold 1"),
    dopd_skill=dict(method="dopd", routing="skill_and", label="DOPD skill-gap routing"),
    dopd_wrong_hint=dict(method="dopd", wrong_hint_cut=0.25, label="DOPD wrong-hint contrast"),
    dopd_early_stop=dict(
        method="dopd",
        early_stop=dict(hs_frac=0.3, a_bar_rise=0, min_entropy=0.0, length_drift=0.0, patience=3),
        label="DOPD early stop",
    ),
)


def get_config(arg=None):
    args, smoke = config_lib.parse_arg(arg, mislead=MISLEAD, student=STUDENTS)
    c = config_lib.base_config()
    c.task.misleading_fraction = float(args.get("mislead", "0.25"))
    if args.get("student", "base") == "small":
        c.student.model = config_lib.sized("xs")
    config_lib.add_variants(c, **RUNS)
    c.distill.methods = ("opd", "dopd", "dopd_hs_teacher", "dopd_frozen", *RUNS)
    if smoke:  # the early stop made to fire at its first log, so the path runs
        config_lib.shrink_to_smoke(c)
        c.distill.methods = ("dopd_skill", "dopd_wrong_hint", "dopd_early_stop")
        c.distill.variants.dopd_early_stop.early_stop.hs_frac = 0.01
        c.distill.variants.dopd_early_stop.early_stop.patience = 1
    return c
