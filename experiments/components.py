"""What each part of DOPD contributes (DOPD paper, Table 8).

dopd               the full method
no_privilege       w/o privileged input: teacher and student passes without p
no_student_side    w/o student-side distillation: HS is not trained
no_teacher_side    w/o teacher-side distillation: only the privileged-student
                   target (HS) is trained
no_routing         w/o advantage-aware routing: every token in one regime
                   (the ``uniform`` rule: strong full JS to the teacher)
no_adaptive_obj    w/o adaptive objectives: reverse KL in every regime
no_adaptive_strat  w/o adaptive strategies: full vocabulary in every regime,
                   weight 1

python -m dopd_jax.sweep --config experiments/components.py --workdir runs/components
python -m dopd_jax.run --config experiments/components.py:smoke --workdir /tmp/comp
"""

from dopd_jax.pipeline import config as config_lib

PAIRED_AGAINST = "dopd"  # the sweep also reports each ablation minus the full DOPD, seed by seed

RUNS = dict(
    dopd_no_privilege=dict(method="dopd", privileged=False, label="w/o privileged input"),
    dopd_no_student_side=dict(method="dopd", regimes=("LH", "LL", "HT"), label="w/o student-side"),
    dopd_no_teacher_side=dict(method="dopd", regimes=("HS",), label="w/o teacher-side"),
    dopd_no_routing=dict(method="dopd", routing="uniform", label="w/o routing"),
    dopd_no_adaptive_obj=dict(method="dopd", objective="rkl", label="w/o adaptive objectives"),
    dopd_no_adaptive_strat=dict(
        method="dopd", granularity="full", adaptive_weights=False, label="w/o adaptive strategies"
    ),
)


def get_config(arg=None):
    _, smoke = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    config_lib.add_variants(c, **RUNS)
    c.distill.methods = ("opd", "dopd", *RUNS)
    if smoke:
        config_lib.shrink_to_smoke(c)
        c.distill.methods = ("dopd_no_routing", "dopd_no_privilege")
    return c
