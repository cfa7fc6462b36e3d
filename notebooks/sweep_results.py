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
# # Sweep results: tables and figures from `dopd_jax.sweep` outputs
#
# Loads every finished cell of a sweep root (`DOPD_SWEEP`, default
# `runs/main_sweep`, as written by
# `python -m dopd_jax.sweep --config experiments/privilege_illusion.py --workdir runs/main_sweep`)
# and redraws its tables and figures; change the cells below to slice the runs
# differently. Without a sweep root it runs a two-seed smoke sweep of
# `experiments/token_pruning.py` in a temporary directory (about a minute on a CPU).

# %%
import glob
import os
import tempfile

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dopd_jax.pipeline import aggregate, sweep  # noqa: E402

root = os.environ.get("DOPD_SWEEP", "runs/main_sweep")
if not glob.glob(os.path.join(root, "*", "*", "results.json")):
    root = tempfile.mkdtemp(prefix="dopd_sweep_")
    module = os.path.join(os.environ.get("DOPD_REPO", "."), "experiments", "token_pruning.py")
    cells = sweep.plan(("smoke",), (0, 1), (0,))
    sweep.run_sweep(module, root, cells, log=lambda *_: None)
print("sweep root:", root)

# %% [markdown]
# ## The cells
# One directory per variant, one workdir per seed and teacher seed.

# %%
cells = {}
for path in sorted(glob.glob(os.path.join(root, "*", "*", "results.json"))):
    variant, cell = path.split(os.sep)[-3:-1]
    cells.setdefault(variant, {})[cell] = os.path.dirname(path)
for variant, ws in cells.items():
    print(variant, sorted(ws))

# %% [markdown]
# ## Mean ± std over seeds
# `gap closed` is (acc - init) / (teacher - init) in each cell, then averaged.

# %%
summaries = {}
for variant, ws in cells.items():
    results = [aggregate.load_cell(w) for w in ws.values()]
    summaries[variant] = aggregate.summarize(results)
    print(f"### {variant}\n")
    print(aggregate.markdown_table(summaries[variant], len(ws)))
if len(summaries) > 1:
    print(aggregate.variant_table(summaries))

# %% [markdown]
# ## Accuracy and entropy over steps
# In-run evaluation accuracy (no `p`, `distill.eval_n` problems) and the
# student's entropy, mean over seeds with a ±1 std band.

# %%
out_dir = os.environ.get("DOPD_FIGURES", root)
for variant, ws in cells.items():
    curves = [aggregate.load_curves(w) for w in ws.values()]
    runs = [n for n in summaries[variant] if n not in aggregate.REFERENCES]
    fig, (acc, ent) = plt.subplots(1, 2, figsize=(10, 3.5))
    for run in runs:
        label = summaries[variant][run]["label"]
        for ax, key, scale in ((acc, "eval_acc", 100.0), (ent, "student_entropy", 1.0)):
            m = aggregate.mean_curve([c.get(run, []) for c in curves], key)
            if m is not None:
                steps, mean, std = m
                (line,) = ax.plot(steps, scale * mean, marker=".", label=label)
                ax.fill_between(
                    steps,
                    scale * (mean - std),
                    scale * (mean + std),
                    alpha=0.2,
                    color=line.get_color(),
                )
    acc.set(xlabel="step", ylabel="accuracy %", title=f"{variant}: accuracy")
    ent.set(xlabel="step", ylabel="nats / token", title="student entropy")
    acc.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f"nb_{variant}_curves.png")
    fig.savefig(path, dpi=100)
    print("wrote", path)

# %% [markdown]
# ## Final accuracy with error bars, and the per-seed spread
# The bars are means over seeds; the dots are the individual seeds, so a
# difference between two runs can be read against the seed spread.

# %%
for variant, ws in cells.items():
    results = [aggregate.load_cell(w) for w in ws.values()]
    runs = [n for n in summaries[variant] if n not in aggregate.REFERENCES]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(runs) + 2), 3.5))
    for i, run in enumerate(runs):
        accs = [100 * r["methods"][run]["acc_test"] for r in results if run in r["methods"]]
        ax.bar(
            i,
            np.mean(accs),
            yerr=np.std(accs, ddof=1) if len(accs) > 1 else 0,
            capsize=4,
            alpha=0.6,
        )
        ax.scatter([i] * len(accs), accs, color="k", s=10, zorder=3)
    ax.set_xticks(
        range(len(runs)), [summaries[variant][r]["label"] for r in runs], rotation=30, ha="right"
    )
    ax.set(ylabel="test accuracy %", title=variant)
    fig.tight_layout()
    path = os.path.join(out_dir, f"nb_{variant}_final.png")
    fig.savefig(path, dpi=100)
    print("wrote", path)
