"""Out-of-distribution transfer: do distilled gains carry past the training problems?

Training (teacher SFT, student warm-up, distillation) sees two-operation
problems only. Evaluation adds, besides the in-distribution ``test`` split:

  hard  same shape, more carries and borrows (held-out harder slice)
  ood   three operations (``task.ood_difficulty="n_ops=3"``): a template never
        seen in training, longer solutions

  python -m dopd_jax.sweep --config experiments/out_of_distribution.py --workdir runs/ood
  python -m dopd_jax.run --config experiments/out_of_distribution.py:smoke --workdir /tmp/ood
"""

from dopd_jax.pipeline import config as config_lib

PAIRED_AGAINST = "opd"  # the sweep also reports each run minus vanilla OPD, seed by seed


def get_config(arg=None):
    _, smoke = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    c.task.ood_difficulty = "n_ops=3"
    c.task.max_prompt_len = 24  # three-operation prompts and their hints
    c.task.max_priv_len = 40
    c.distill.max_new_tokens = 48  # three worked steps
    c.distill.methods = ("opd", "privt", "opsd", "dopd", "dopd_hs_teacher")
    if smoke:
        config_lib.shrink_to_smoke(c)
        c.distill.methods = ("opd",)
    return c
