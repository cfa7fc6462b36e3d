"""Which privileged input helps (DOPD paper, Tables 4-5)?

One variant per form of p used in distillation, the rest fixed (the teacher
was trained seeing every form, so each is in distribution for it):

  none        no privileged context (DOPD degenerates to plain-pass routing)
  hints       the plan without values          (hint: 57*6=a a+17=b)
  exec_hints  the plan's values                (hint: 342, 359)
  answer      the final answer only            (hint: 359)

Runs: Priv.T->S (privt) and DOPD under each form.

  python -m dopd_jax.sweep --config experiments/privileged_forms.py --workdir runs/forms
  python -m dopd_jax.run --config experiments/privileged_forms.py:form=answer,smoke --workdir /tmp/f
"""

from dopd_jax.pipeline import config as config_lib

FORMS = ("none", "hints", "exec_hints", "answer")
VARIANTS = tuple(f"form={f}" for f in FORMS)


def get_config(arg=None):
    args, smoke = config_lib.parse_arg(arg, form=FORMS)
    c = config_lib.base_config()
    form = args.get("form", "exec_hints")
    c.task.priv_form = form
    if form == "none":  # no p to route by: DOPD on plain passes, the plain-teacher baseline
        c.distill.methods = ("opd", "dopd_plain")
        config_lib.add_variants(c, dopd_plain=dict(method="dopd", privileged=False))
    else:
        c.distill.methods = ("privt", "dopd")
    if smoke:
        config_lib.shrink_to_smoke(c)
    return c
