"""Main experiment: does DOPD's routing beat vanilla OPD when privilege misleads?

Hypothesis (DOPD, arXiv 2606.30626): a privileged teacher's confidence mixes
real skill with privileged information the deployed student never sees.
Routing each token by the gap between the privileged teacher and the
privileged student (methods.md section 4) should distil the skill and not the
illusion, and so beat vanilla OPD, Priv.T->S and OPSD from the same student
initialisation, seeds and budget.

The setting (experiments/README.md records the search that chose it): a
d96x3 teacher SFT-trained for 1,200 steps, a d64x2 student warmed up for 800,
then 600 distillation steps of 16 prompts x 4 rollouts at AdamW 3e-3, with
OPD's full-vocabulary reverse KL; vanilla OPD closes ~40% of the gap between
the student init and the teacher there.

Variants (``dopd_jax.sweep`` runs both, sharing the teacher and student init):
  (default)  opd, privt (Priv.T->S), opsd, dopd, dopd_frozen
  more       gkd and the other DOPD robustness switches: hs_target=teacher,
             priv_student=ema, a fixed gap threshold

Run (the README's main command):
  python -m dopd_jax.run --config experiments/privilege_illusion.py --workdir runs/main
Seeds 0, 1, 2 and both variants, with tables and figures:
  python -m dopd_jax.sweep --config experiments/privilege_illusion.py --workdir runs/main_sweep
Smoke (about a minute, used by the tests):
  python -m dopd_jax.run --config experiments/privilege_illusion.py:smoke --workdir /tmp/smoke
"""

from dopd_jax.pipeline import config as config_lib

VARIANTS = ("", "set=more")
PAIRED_AGAINST = "opd"  # the sweep also reports each run minus OPD, seed by seed


def get_config(arg=None):
    args, smoke = config_lib.parse_arg(arg, set=("more",))
    c = config_lib.base_config()
    if args.get("set") == "more":
        config_lib.add_variants(
            c,
            dopd_ema=dict(method="dopd", priv_student="ema", label="DOPD priv_student=ema"),
            dopd_fixed_gap=dict(method="dopd", gap_threshold=1.0, label="DOPD gap threshold 1"),
        )
        c.distill.methods = ("gkd", "dopd_hs_teacher", "dopd_ema", "dopd_fixed_gap")
    if smoke:
        config_lib.shrink_to_smoke(c)
    return c
