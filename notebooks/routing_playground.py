# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
# ---

# %% [markdown]
# # Routing playground: prototype DOPD routing rules on captured token statistics
#
# DOPD routes every response token by the gap between the privileged teacher and
# the privileged student (methods.md section 4). This notebook captures one
# on-policy batch of per-token statistics from a trained teacher and a warmed-up
# student, then compares routing rules on those arrays, with no training code.
#
# It reuses the teacher and student of a main-experiment workdir
# (`DOPD_WORKDIR`, default `runs/main`); without one it builds the smoke-size
# stages in a temporary directory (about 15 s on a CPU).

# %%
import os
import tempfile

import jax
import numpy as np

from dopd_jax.losses import routing
from dopd_jax.pipeline import analysis, config_checks, context, distill_stage, sft_stage
from dopd_jax.pipeline import config as config_lib
from dopd_jax.trainer.metric_writer import MetricWriter

workdir = os.environ.get("DOPD_WORKDIR", "runs/main")
if os.path.exists(os.path.join(workdir, "student_init")):
    cfg = config_lib.load_config(workdir)
    smoke = False
else:
    workdir, smoke = tempfile.mkdtemp(prefix="dopd_playground_"), True
    cfg = config_lib.base_config()
    config_lib.shrink_to_smoke(cfg)
print("workdir:", workdir, "(smoke stages)" if smoke else "")

# %%
exp = config_checks.validate(cfg)  # the config read once into typed specs
ctx = context.build_context(exp, workdir, print)
progress = context.Progress(exp.teacher.steps + exp.student.steps)
writer = MetricWriter(workdir, tensorboard=False)
teacher = sft_stage.model_stage(ctx, exp.teacher, writer, progress)
student = sft_stage.model_stage(ctx, exp.student, writer, progress)
progress.close()

# %% [markdown]
# ## Capture one on-policy batch
# Larger batches give steadier batch reference values (`A_bar`, `qS_bar`, `qT_bar`).

# %%
run = next(r for r in exp.runs if r.name == "dopd")
spec = distill_stage.make_spec(run, ctx.tok)
examples, batch = next(distill_stage.distill_batches(ctx, ctx.task.train(run.batch_prompts, 1234)))
stats = analysis.capture_token_stats(spec, student, teacher, batch, examples, jax.random.key(0))
print({k: v.shape for k, v in stats.items()})
print("misleading rows:", int(stats["misleading"].sum()), "of", len(stats["misleading"]))

# %% [markdown]
# ## The paper's rule, and two variants
# `dopd_regimes` is the rule `dopd_loss` uses. A fixed gap threshold and a
# confidence-only rule show how a prototype plugs in: any function returning
# 0/1 masks that partition the valid tokens.


# %%
def confidence_only(gap, qS, qT, mask):
    """Ignore the gap: strong JS where the teacher is more confident, else weak."""
    valid = np.asarray(mask, bool)
    ht = valid & (qT >= qS)
    return {"LH": np.zeros_like(valid), "LL": valid & ~ht, "HT": ht, "HS": np.zeros_like(valid)}


rules = {
    "dopd (trimmed batch mean)": lambda g, s, t, m: routing.dopd_regimes(g, s, t, m)[0],
    "dopd (fixed gap 0.5)": lambda g, s, t, m: routing.dopd_regimes(g, s, t, m, gap_threshold=0.5)[
        0
    ],
    "confidence only": confidence_only,
}
for name, rule in rules.items():
    regimes = jax.device_get(rule(stats["gap"], stats["qS"], stats["qT"], stats["mask"]))
    honest = analysis.regime_shares(regimes, stats["mask"], ~stats["misleading"])
    misled = analysis.regime_shares(regimes, stats["mask"], stats["misleading"])
    print(f"{name:<28} honest rows:", {k: f"{v:.0%}" for k, v in honest.items()})
    print(f"{'':<28} misleading rows:", {k: f"{v:.0%}" for k, v in misled.items()})

# %% [markdown]
# ## Where do the large gaps fall?
# Mean gap per response position: large gaps early in the response are where the
# privileged teacher's plan differs from the privileged student's.

# %%
mask = stats["mask"].astype(float)
per_pos = (stats["gap"] * mask).sum(0) / np.maximum(mask.sum(0), 1)
print(np.round(per_pos, 2))
_, refs = routing.dopd_regimes(stats["gap"], stats["qS"], stats["qT"], stats["mask"])
print({k: round(float(v), 3) for k, v in refs.items()})

# %% [markdown]
# ## From the notebook to a run
# A rule the framework can train with has the signature of `losses.rules`:
# `rule(stats, mask, *, refs=None, outlier_fraction, gap_threshold) -> (regimes, refs)`,
# where `stats` holds the per-token arrays above (and `skill` when the rule
# needs it). Written with `jax.numpy`, the same function runs inside the jitted
# step: save it in a module and name it in a config, e.g.
# `c.method_args.dopd.routing = "my_rules:confidence_rule"` or a variant
# `dict(method="dopd", routing="my_rules:confidence_rule")`. The registered
# rules (`dopd`, `skill_and`, `skill_replace`, `uniform`) have this form.

# %%
import jax.numpy as jnp  # noqa: E402

from dopd_jax.losses import rules as rules_lib  # noqa: E402


def confidence_rule(stats, mask, *, refs=None, outlier_fraction=0.05, gap_threshold=None):
    """``confidence_only`` in the framework's rule form (no batch references)."""
    valid = jnp.asarray(mask) > 0
    ht = valid & (stats["qT"] >= stats["qS"])
    zero = jnp.zeros(valid.shape, jnp.float32)
    return {
        "LH": zero,
        "LL": (valid & ~ht).astype(jnp.float32),
        "HT": ht.astype(jnp.float32),
        "HS": zero,
    }, {}


for name, rule in {"dopd": rules_lib.get_rule("dopd"), "confidence_rule": confidence_rule}.items():
    regimes, _ = rule({k: jnp.asarray(v) for k, v in stats.items()}, jnp.asarray(stats["mask"]))
    shares = analysis.regime_shares(jax.device_get(regimes), stats["mask"])
    print(f"rule form {name:<16}", {k: f"{v:.0%}" for k, v in shares.items()})
