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
# # One DOPD step, taken apart
#
# The pieces of `dopd_loss` (methods.md section 4) on one on-policy batch of a
# small model: the student samples responses without `p`; the privileged
# teacher and the privileged student score them given `p`; per token the gap
# `A = |log qT - log qS|` and the two confidences route it to one of four
# regimes, each with its own divergence and weight; only the student's logits
# receive a gradient.
#
# It uses the teacher and student of a main-experiment workdir
# (`DOPD_WORKDIR`, default `runs/main`); without one it trains the smoke-size
# stages in a temporary directory (about 15 s on a CPU).

# %%
import os
import tempfile

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dopd_jax import steps as steps_lib  # noqa: E402
from dopd_jax.losses import dopd_loss, routing  # noqa: E402
from dopd_jax.pipeline import config as config_lib  # noqa: E402
from dopd_jax.pipeline import config_checks, context, distill_stage, sft_stage  # noqa: E402
from dopd_jax.steps import scoring  # noqa: E402
from dopd_jax.trainer.metric_writer import MetricWriter  # noqa: E402

workdir = os.environ.get("DOPD_WORKDIR", "runs/main")
if os.path.exists(os.path.join(workdir, "student_init")):
    cfg = config_lib.load_config(workdir)
else:
    workdir = tempfile.mkdtemp(prefix="dopd_walkthrough_")
    cfg = config_lib.base_config()
    config_lib.shrink_to_smoke(cfg)
out_dir = os.environ.get("DOPD_FIGURES", workdir)
exp = config_checks.validate(cfg)
ctx = context.build_context(exp, workdir, print)
writer = MetricWriter(workdir, tensorboard=False)
progress = context.Progress(exp.teacher.steps + exp.student.steps)
teacher = sft_stage.model_stage(ctx, exp.teacher, writer, progress)
student = sft_stage.model_stage(ctx, exp.student, writer, progress)
progress.close()

# %% [markdown]
# ## 1. Rollout: the student samples without `p`

# %%
run = next(r for r in exp.runs if r.method.name == "dopd")
spec = distill_stage.make_spec(run, ctx.tok)
examples, batch = next(distill_stage.distill_batches(ctx, ctx.task.train(run.batch_prompts, 7)))
state = steps_lib.TrainState(student.params, None, student.params, np.int32(0))
graphdefs = {"student": student.graphdef, "teacher": teacher.graphdef}
teachers = {"teacher": teacher.params}
ro = steps_lib.rollout_step(graphdefs, spec, state, teachers, batch, jax.random.key(0))
print("prompt :", examples[0].prompt, "| p =", examples[0].privileged[exp.task.priv_form])
print("sampled:", ctx.tok.decode(np.asarray(ro.tokens_BT[0])[np.asarray(ro.mask_BT[0])]))
print("gold   :", examples[0].response)

# %% [markdown]
# ## 2. Scoring: the privileged teacher and the privileged student read `x + p`
# The student's own logits (no `p`) are the only ones that will get a gradient.

# %%
targets = steps_lib.score_step(graphdefs, spec, state, teachers, batch, ro)
student_BTV = scoring.teacher_forced_logits(
    student.graphdef, student.params, ro.prompt_BP, ro.prompt_mask_BP, ro.tokens_BT
)
print({k: v.shape for k, v in targets.items() if not k.startswith("logp_")})

# %% [markdown]
# ## 3. Token statistics and regimes
# `A_bar` is the trimmed batch mean of the gap; `qS_bar + qT_bar` the confidence
# reference. Large gap and teacher surer: HT (strong full JS to the teacher);
# large gap and student surer: HS (light top-K RKL to the privileged student);
# small gap: LH / LL by confidence (light / weak top-K RKL to the teacher).

# %%
stats = routing.privilege_stats(targets["priv_student"], targets["priv_teacher"], ro.tokens_BT)
regimes, refs = routing.dopd_regimes(stats["gap"], stats["qS"], stats["qT"], ro.mask_BT)
mask = np.asarray(ro.mask_BT)
print({k: round(float(v), 3) for k, v in refs.items()})
shares = {r: float((np.asarray(m) * mask).sum() / mask.sum()) for r, m in regimes.items()}
print("regime shares:", {r: f"{s:.0%}" for r, s in shares.items()})
row = 0
names = {r: np.asarray(m[row]) > 0 for r, m in regimes.items()}
for n in range(int(mask[row].sum())):
    piece = ctx.tok.id_to_piece(int(ro.tokens_BT[row, n]))
    regime = next(r for r, m in names.items() if m[n])
    gap, qs, qt = (float(stats[k][row, n]) for k in ("gap", "qS", "qT"))
    print(f"{piece!r:>8}  A={gap:5.2f}  qS={qs:.2f}  qT={qt:.2f}  -> {regime}")

# %% [markdown]
# ## 4. The regime map
# Each valid token by its gap and the teacher-minus-student confidence, coloured
# by regime; the vertical line is `A_bar`.

# %%
fig, ax = plt.subplots(figsize=(6, 4))
diff = np.asarray(stats["qT"] - stats["qS"])
for r, m in regimes.items():
    sel = (np.asarray(m) > 0) & mask
    ax.scatter(np.asarray(stats["gap"])[sel], diff[sel], s=6, label=f"{r} ({shares[r]:.0%})")
ax.axvline(float(refs["A_bar"]), color="k", ls="--", lw=1)
ax.set(xlabel="gap A = |log qT - log qS|", ylabel="qT - qS", title="DOPD regimes of one batch")
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(out_dir, "regime_map.png"), dpi=100)
print("wrote", os.path.join(out_dir, "regime_map.png"))

# %% [markdown]
# ## 5. Per-regime losses and the gradient
# `dopd_loss` returns the loss and per-regime diagnostics. The gradient flows
# into the student's logits only: both privileged inputs are stop-gradient.

# %%
loss_kw = dict(top_k=min(run.config.top_k, student_BTV.shape[-1] - 1))


def loss_of(s, ps, t):
    return dopd_loss(s, ps, t, ro.tokens_BT, ro.mask_BT, **loss_kw)


(loss, metrics), grads = jax.value_and_grad(loss_of, argnums=(0, 1, 2), has_aux=True)(
    student_BTV, targets["priv_student"], targets["priv_teacher"]
)
print(f"loss {float(loss):.4f}")
print({k: round(float(v), 4) for k, v in metrics.items() if k.startswith(("loss_", "frac_"))})
print(
    "grad norms (student, priv student, priv teacher):", [float(jnp.linalg.norm(g)) for g in grads]
)
per_token = jnp.linalg.norm(grads[0], axis=-1)
for r, m in regimes.items():
    sel = (np.asarray(m) > 0) & mask
    mean = float(np.asarray(per_token)[sel].mean()) if sel.any() else 0.0
    print(f"mean |dL/dlogits| on {r} tokens: {mean:.2e}")
