"""Sweep figures (matplotlib, PNG): learning curves, DOPD routing, final accuracies.

Each function takes the per-cell records of one variant (``aggregate.load_curves``
per seed, ``aggregate.summarize`` of the seeds) and writes one PNG; means over
seeds with a shaded +-1 std band.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dopd_jax.pipeline import aggregate  # noqa: E402

REGIMES = ("LH", "LL", "HT", "HS")


def _band(ax, per_cell, key, label, scale=1.0):
    m = aggregate.mean_curve(per_cell, key)
    if m is None:
        return False
    steps, mean, std = m
    (line,) = ax.plot(steps, scale * mean, label=label, marker="." if len(steps) < 12 else None)
    ax.fill_between(
        steps, scale * (mean - std), scale * (mean + std), alpha=0.2, color=line.get_color()
    )
    return True


def _legend(ax, size: int) -> None:
    if ax.get_legend_handles_labels()[0]:  # runs without the metric draw nothing
        ax.legend(fontsize=size)


def learning_curves(curves: list[dict], labels: dict[str, str], path: str, title: str) -> None:
    """Accuracy (in-run evaluation) and student entropy over steps, one line per run."""
    fig, (acc, ent) = plt.subplots(1, 2, figsize=(11, 4))
    for run in labels:
        per_cell = [c.get(run, []) for c in curves]
        _band(acc, per_cell, "eval_acc", labels[run], 100.0)
        _band(ent, per_cell, "student_entropy", labels[run])
    acc.set(xlabel="step", ylabel="accuracy % (in-run eval, no p)", title="accuracy")
    ent.set(xlabel="step", ylabel="nats / token", title="student entropy")
    _legend(acc, 7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def routing(curves: list[dict], labels: dict[str, str], path: str, title: str) -> bool:
    """Regime fractions and ``A_bar`` over steps of every run that logged them."""
    runs = [r for r in labels if any("frac_HS" in x for c in curves for x in c.get(r, []))]
    if not runs:
        return False
    fig, axes = plt.subplots(2, len(runs), figsize=(4 * len(runs), 6.5), squeeze=False)
    for j, run in enumerate(runs):
        per_cell = [c.get(run, []) for c in curves]
        for regime in REGIMES:
            _band(axes[0, j], per_cell, f"frac_{regime}", regime, 100.0)
        _band(axes[1, j], per_cell, "A_bar", "A_bar")
        axes[0, j].set(title=labels[run], ylabel="% of response tokens", ylim=(-3, 103))
        axes[1, j].set(xlabel="step", ylabel="A_bar (trimmed mean |gap|)")
        _legend(axes[0, j], 7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def final_bars(summary: dict[str, dict], path: str, title: str, key: str = "acc_test") -> None:
    """Final accuracy per run with +-1 std error bars; teacher and init as lines."""
    runs = [n for n in summary if n not in aggregate.REFERENCES and key in summary[n]]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(runs) + 2), 4))
    means = [100 * summary[n][key][0] for n in runs]
    stds = [100 * summary[n][key][1] for n in runs]
    ax.bar(range(len(runs)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    for ref, style in (("teacher", "--"), ("student_init", ":")):
        if key in summary.get(ref, {}):
            ax.axhline(100 * summary[ref][key][0], ls=style, color="k", label=ref)
    ax.set_xticks(range(len(runs)), [summary[n]["label"] for n in runs], rotation=30, ha="right")
    ax.set(ylabel=f"{key.removeprefix('acc_')} accuracy % (mean ± std over seeds)", title=title)
    _legend(ax, 8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
