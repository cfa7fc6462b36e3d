"""MOPD's loss form x where its domain teachers come from (MOPD paper, Table 4).

From one shared SFT student init, each variant builds one teacher per domain:

  teacher=rl    GRPO on that domain's verifier (the paper's RL teachers)
  teacher=sft   SFT on that domain's gold solutions (GKD with lmbda=0: the
                forward KL of the sampled gold token, i.e. cross-entropy)

and distils the student from the same init with MOPD in both loss forms:

  mopd_pg       A_n = clip(log T_d(y_n) - log S(y_n), -5, 5) as a policy gradient
  mopd_topk     generalized top-64 reverse KL to the domain teacher
  mopd_pg_orm   pg plus the outcome advantage (alpha = 1) and the truncated
                importance weight (is_clip = (0.8, 1.2))

The table's normalized block is (s_d - s_SFT) / (s_teacher_d - s_SFT).
Multi-round MOPD (Table 5: new teachers trained from the round-1 student,
then a second distillation) needs a per-run teacher mapping, which the
runner does not have yet (``distill.teachers`` is one mapping per experiment).

  python -m dopd_jax.sweep --config experiments/mopd_forms.py --workdir runs/mopd_forms
  python -m dopd_jax.run --config experiments/mopd_forms.py:teacher=sft,smoke --workdir /tmp/mf
"""

from dopd_jax.pipeline import config as config_lib

DOMAINS = ("arith", "sort", "linear")
VARIANTS = ("teacher=rl", "teacher=sft")


def _teacher_runs(origin: str, domains, steps: int) -> dict:
    if origin == "rl":
        return {f"rl_{d}": dict(method="grpo", domains=(d,), steps=steps) for d in domains}
    return {
        f"sft_{d}": dict(
            method="gkd", lmbda=0.0, kind="fkl", granularity="sampled", domains=(d,), steps=steps
        )
        for d in domains
    }


def get_config(arg=None):
    args, smoke = config_lib.parse_arg(arg, teacher=("rl", "sft"))
    origin = args.get("teacher", "rl")
    c = config_lib.base_config()
    if smoke:
        config_lib.shrink_to_smoke(c)
    domains = DOMAINS[:2] if smoke else DOMAINS
    c.task.domain = ",".join(domains)
    c.task.priv_form = "none"
    c.task.max_prompt_len = 24
    c.task.max_priv_len = 24
    c.teacher.model = c.student.model  # reference row only: MOPD reads the domain teachers
    c.teacher.steps = 10 if smoke else 100
    teacher_steps, steps = (2, 2) if smoke else (200, 300)
    runs = _teacher_runs(origin, domains, teacher_steps)
    runs["mopd_pg"] = dict(method="mopd", label="MOPD pg", steps=steps)
    runs["mopd_topk"] = dict(method="mopd", form="topk", label="MOPD top-64", steps=steps)
    runs["mopd_pg_orm"] = dict(
        method="mopd", alpha=1.0, is_clip=(0.8, 1.2), label="MOPD pg + ORM + IS", steps=steps
    )
    config_lib.add_variants(c, **runs)
    c.distill.methods = tuple(runs)
    c.distill.teachers = {d: f"run:{origin}_{d}" for d in domains}
    c.distill.log_passes = ()
    c.distill.eval_every = 0
    if smoke:
        c.distill.methods = tuple(n for n in runs if n != "mopd_pg_orm")
    return c
