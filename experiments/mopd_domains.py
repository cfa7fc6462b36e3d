"""MOPD and its four baselines on several generated domains (MOPD paper, Table 2).

Pipeline (methods.md section 7): the shared SFT student init -> one RL
teacher per domain (GRPO on that domain only, from the init) -> the student,
from the same init, distilled by:

  mopd          MOPD: each rollout scored by its own domain's teacher (pg form)
  mix_rl        Mix-RL: GRPO on the domain mix
  cascade_<d>   Cascade RL: GRPO domain after domain (each from the previous)
  offpolicy_ft  Off-policy FT: SFT on each domain teacher's samples (GKD with
                lmbda=0, seq_kd, sampled forward KL, routed teacher)
  merge_avg     Param-Merge: the domain teachers' weights averaged
  merge_ta      Param-Merge: task arithmetic theta_0 + lam sum_d (theta_d - theta_0)

The table's "normalized score" block is ``(s_d - s_SFT) / (s_teacher_d -
s_SFT)`` per domain, averaged uniformly (the paper's metric). The
experiment's own SFT teacher (``teacher``) is not one of MOPD's teachers; it
is kept small and only gives the reference row.

Run:
  python -m dopd_jax.run --config experiments/mopd_domains.py --workdir runs/mopd
Smoke (two domains, a few steps each; used by the tests):
  python -m dopd_jax.run --config experiments/mopd_domains.py:smoke --workdir /tmp/mopd
"""

from dopd_jax.pipeline import config as config_lib


def _runs(domains, rl_steps: int, steps: int) -> tuple[tuple, dict]:
    variants = {f"grpo_{d}": dict(method="grpo", domains=(d,), steps=rl_steps) for d in domains}
    variants["mix_rl"] = dict(method="grpo", label="Mix-RL", steps=steps)
    previous = ""
    for d in domains:
        variants[f"cascade_{d}"] = dict(
            method="grpo",
            label=f"Cascade RL ..{d}",
            domains=(d,),
            init=previous,
            steps=max(1, steps // len(domains)),
        )
        previous = f"run:cascade_{d}"
    variants["offpolicy_ft"] = dict(
        method="gkd",
        label="Off-policy FT",
        lmbda=0.0,
        seq_kd=True,
        kind="fkl",
        granularity="sampled",
        teacher_role="teacher/@domain",
        steps=steps,
    )
    variants["merge_avg"] = dict(method="merge", label="Param-Merge (avg)", steps=0)
    variants["merge_ta"] = dict(
        method="merge", label="Param-Merge (TA)", mode="task_arithmetic", lam=0.5, steps=0
    )
    methods = (
        [f"grpo_{d}" for d in domains]
        + ["mopd", "mix_rl"]
        + [f"cascade_{d}" for d in domains]
        + ["offpolicy_ft", "merge_avg", "merge_ta"]
    )
    return tuple(methods), variants


def get_config(arg=None):
    c = config_lib.base_config()
    smoke = arg == "smoke"
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown argument {arg!r}; valid: smoke")
    if smoke:
        config_lib.shrink_to_smoke(c)
    domains = config_lib.mopd_setting(c, smoke)
    rl_steps, steps = (2, 2) if smoke else (200, 300)
    methods, variants = _runs(domains, rl_steps, steps)
    c.distill.methods = methods
    c.distill.variants = variants
    c.distill.teachers = {d: f"run:grpo_{d}" for d in domains}
    return c
