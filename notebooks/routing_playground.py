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
# # Routing workbench: prototype a DOPD routing rule, then train with it
#
# DOPD routes every response token by the gap between the privileged teacher and
# the privileged student (methods.md section 4). This notebook captures one
# on-policy batch of per-token statistics from a trained teacher and a warmed-up
# student, compares routing rules on those arrays (no training code), plots the
# regime map, and finally trains a few steps with a new rule next to DOPD.
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

# %% [markdown]
# ## The regime map of each rule
# Every valid token of the captured batch by its gap and the teacher-minus-student
# confidence, coloured by the regime the rule gives it.

# %%
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

valid = np.asarray(stats["mask"], bool)
diff = stats["qT"] - stats["qS"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for ax, (name, rule) in zip(
    axes, {"dopd": rules_lib.get_rule("dopd"), "confidence_rule": confidence_rule}.items()
):
    regimes, _ = rule({k: jnp.asarray(v) for k, v in stats.items()}, jnp.asarray(stats["mask"]))
    for r, m in jax.device_get(regimes).items():
        sel = (np.asarray(m) > 0) & valid
        ax.scatter(stats["gap"][sel], diff[sel], s=5, label=f"{r} ({sel.sum() / valid.sum():.0%})")
    ax.set(title=name, xlabel="gap A")
    ax.legend(fontsize=7)
axes[0].set_ylabel("qT - qS")
fig.tight_layout()
map_path = os.path.join(os.environ.get("DOPD_FIGURES", workdir), "rule_regime_maps.png")
fig.savefig(map_path, dpi=100)
print("wrote", map_path)

# %% [markdown]
# ## Train with the new rule, next to DOPD
# A rule the runner can load lives in an importable module: write it to a file,
# put its directory on `sys.path` and name it `module:function`. Both runs start
# from the same teacher and student (`workdir:` sources), in a separate workdir,
# so the source workdir is left untouched. `DOPD_TRAIN_STEPS` sets the budget.

# %%
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

from dopd_jax.pipeline.runner import run_experiment  # noqa: E402

if smoke:  # the temporary stages become a workdir other runs can load models from
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config_lib.to_json_dict(cfg), f)
rule_dir = tempfile.mkdtemp(prefix="dopd_rules_")
with open(os.path.join(rule_dir, "my_rules.py"), "w") as f:
    f.write("import jax.numpy as jnp\n\n\n" + textwrap.dedent(inspect.getsource(confidence_rule)))
sys.path.insert(0, rule_dir)

if smoke:
    trial = config_lib.base_config()
    config_lib.shrink_to_smoke(trial)
else:
    trial = config_lib.load_config(workdir)
trial.teacher.source = trial.student.source = "workdir:" + workdir
trial.distill.steps = int(os.environ.get("DOPD_TRAIN_STEPS", 4 if smoke else 100))
trial.distill.eval_every = 0
config_lib.add_variants(
    trial,
    dopd_confidence=dict(
        method="dopd", routing="my_rules:confidence_rule", label="confidence rule"
    ),
)
trial.distill.methods = ("dopd", "dopd_confidence")
trial_dir = tempfile.mkdtemp(prefix="dopd_rule_trial_")
results = run_experiment(trial, trial_dir, log=lambda *_: None)
for name, r in results["methods"].items():
    final = r["final"]
    print(
        f"{r.get('label') or name:<18} test {100 * r['acc_test']:5.1f}%  "
        f"KL(T+p) {final['kl_to_priv_teacher']:.3f}  "
        f"HS {final.get('frac_HS', 0):.0%}  HT {final.get('frac_HT', 0):.0%}"
    )
