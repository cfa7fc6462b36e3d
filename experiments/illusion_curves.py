"""The privilege illusion (DOPD paper, Fig. 3): who should see p, teacher or student?

Four teacher/student pairings from the same student init, same budget:

  T->S             vanilla OPD: neither sees p
  Priv.S->S        OPSD: the student given p is the target
  Priv.T->S        the teacher given p is the target (uniform loss)
  Priv.T->Priv.S   the student trained (and sampling) given p too

Question: does the privileged teacher's advantage rise and then fall over
training (the paper's "early gain then degradation"), and how does the
student's entropy move? The sweep's curves figure plots accuracy and
entropy over steps per pairing; ``priv%`` in the table is each student given p.

  python -m dopd_jax.sweep --config experiments/illusion_curves.py --workdir runs/illusion
  python -m dopd_jax.run --config experiments/illusion_curves.py:smoke --workdir /tmp/ill
"""

from dopd_jax.pipeline import config as config_lib

PAIRED_AGAINST = "opd"  # the sweep also reports each pairing minus T->S (vanilla OPD), seed by seed


def get_config(arg=None):
    _, smoke = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    c.distill.methods = ("opd", "opsd", "privt", "privt_privs")
    c.distill.eval_every = 50
    if smoke:
        config_lib.shrink_to_smoke(c)
    return c
