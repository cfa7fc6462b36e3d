"""MOPD's loss form x where its domain teachers come from (MOPD paper, Table 4).

From one shared SFT student init, each variant builds one teacher per domain:

  teacher=rl    GRPO on that domain's verifier (the paper's RL teachers)
  teacher=sft   SFT on that domain's gold solutions (GKD with lmbda=0: the
                forward KL of the sampled gold token, i.e. cross-entropy),
                600 steps of 64 prompts at lr 3e-3 (config.SFT_TEACHER_STEP)

and distils the student from the same init with MOPD in both loss forms:

  mopd_pg       A_n = clip(log T_d(y_n) - log S(y_n), -5, 5) as a policy gradient
  mopd_topk     generalized top-64 reverse KL to the domain teacher
  mopd_pg_orm   pg plus the outcome advantage (alpha = 1) and the truncated
                importance weight (is_clip = (0.8, 1.2))

The table's normalized block is (s_d - s_SFT) / (s_teacher_d - s_SFT), against
the round-1 teachers.

``rounds=2`` adds multi-round MOPD (Table 5): a second set of domain
teachers trained the same way but from the round-1 MOPD student
(``<origin>2_<domain>``, init ``run:mopd_pg``), then ``mopd_pg_r2``: MOPD pg
again from the round-1 student, scored by the round-2 teachers (the
variant's own ``teachers`` mapping). ``mopd_pg_more`` is its control: the
same second round (600 steps from the round-1 student, a fresh schedule) scored
by the round-1 teachers, so "new teachers" and "more steps" come apart.

  python -m dopd_jax.sweep --config experiments/mopd_forms.py --workdir runs/mopd_forms
  python -m dopd_jax.sweep --config experiments/mopd_forms.py --workdir runs/mopd_forms \
      --variants teacher=sft,rounds=2 --seeds 0
  python -m dopd_jax.run --config experiments/mopd_forms.py:teacher=sft,smoke --workdir /tmp/mf
  python -m dopd_jax.run --config experiments/mopd_forms.py:rounds=2,smoke --workdir /tmp/mr
"""

from dopd_jax.pipeline import config as config_lib

VARIANTS = ("teacher=rl", "teacher=sft", "teacher=rl,rounds=2", "teacher=sft,rounds=2")
PAIRED_AGAINST = "mopd_pg"  # the sweep reports each form minus MOPD pg per seed


def get_config(arg=None):
    args, smoke = config_lib.parse_arg(arg, teacher=("rl", "sft"), rounds=("1", "2"))
    origin = args.get("teacher", "rl")
    c = config_lib.base_config()
    if smoke:
        config_lib.shrink_to_smoke(c)
    domains = config_lib.mopd_setting(c, smoke)
    steps = 2 if smoke else 600
    runs = config_lib.domain_teacher_runs(origin, domains, smoke=smoke)
    runs["mopd_pg"] = dict(method="mopd", label="MOPD pg", steps=steps)
    runs["mopd_topk"] = dict(method="mopd", form="topk", label="MOPD top-64", steps=steps)
    runs["mopd_pg_orm"] = dict(
        method="mopd", alpha=1.0, is_clip=(0.8, 1.2), label="MOPD pg + ORM + IS", steps=steps
    )
    if smoke:
        del runs["mopd_pg_orm"]
    if args.get("rounds") == "2":
        second = config_lib.domain_teacher_runs(
            origin, domains, prefix="2", init="run:mopd_pg", smoke=smoke
        )
        runs.update(second)
        runs["mopd_pg_r2"] = dict(
            method="mopd",
            label="MOPD pg, round 2",
            steps=steps,
            init="run:mopd_pg",
            teachers={d: f"run:{name}" for d, name in zip(domains, second)},
        )
        runs["mopd_pg_more"] = dict(
            method="mopd",
            label="MOPD pg, round 2, round-1 teachers",
            steps=steps,
            init="run:mopd_pg",
        )
    config_lib.add_variants(c, **runs)
    c.distill.methods = tuple(runs)
    c.distill.teachers = {d: f"run:{origin}_{d}" for d in domains}
    return c
