"""Sweep figures (matplotlib, PNG): learning curves, DOPD routing, final accuracies.

Each function takes the per-cell records of one variant (``aggregate.load_curves``
per seed, ``aggregate.summarize`` of the seeds) and writes one PNG; means over
seeds with a shaded +-1 std band.
"""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dopd_jax.pipeline import aggregate  # noqa: E402

REGIMES = ("LH", "LL", "HT", "HS")


def band_limits(mean, std, scale=1.0, top=None):
    """The shaded band's edges: mean -+ std, clipped to the metric's range.

    Every curve drawn here (accuracy, entropy, regime shares, ``A_bar``) is
    non-negative, and shares and accuracies stop at ``top``; a band past those
    limits would show values no seed can take.
    """
    lo = np.maximum(scale * (mean - std), 0.0)
    hi = scale * (mean + std)
    return lo, (hi if top is None else np.minimum(hi, top))


def _band(ax, per_cell, key, label, scale=1.0, top=None):
    m = aggregate.mean_curve(per_cell, key)
    if m is None:
        return False
    steps, mean, std = m
    (line,) = ax.plot(steps, scale * mean, label=label, marker="." if len(steps) < 12 else None)
    lo, hi = band_limits(mean, std, scale, top)
    ax.fill_between(steps, lo, hi, alpha=0.2, color=line.get_color())
    return True


def _legend(ax, size: int) -> None:
    if ax.get_legend_handles_labels()[0]:  # runs without the metric draw nothing
        ax.legend(fontsize=size)


def learning_curves(curves: list[dict], labels: dict[str, str], path: str, title: str) -> None:
    """Accuracy and student entropy over steps, one line per run.

    Accuracy is the in-run evaluation (greedy, no p) where the runs logged one,
    else the sampled reward of the training rollouts (``eval_every=0``: MOPD).
    """
    fig, (acc, ent) = plt.subplots(1, 2, figsize=(11, 4))
    logged = {k for c in curves for rows in c.values() for r in rows for k in r}
    key, what = ("eval_acc", "in-run eval, no p")
    if key not in logged:
        key, what = ("reward", "sampled reward of the rollouts")
    for run in labels:
        per_cell = [c.get(run, []) for c in curves]
        _band(acc, per_cell, key, labels[run], 100.0, top=100.0)
        _band(ent, per_cell, "student_entropy", labels[run])
    acc.set(xlabel="step", ylabel=f"accuracy % ({what})", title="accuracy")
    ent.set(xlabel="step", ylabel="nats / token", title="student entropy")
    _legend(acc, 7)
    if not acc.get_legend_handles_labels()[0]:
        _legend(ent, 7)
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
            _band(axes[0, j], per_cell, f"frac_{regime}", regime, 100.0, top=100.0)
        _band(axes[1, j], per_cell, "A_bar", "A_bar")
        axes[0, j].set(title=labels[run], ylabel="% of response tokens", ylim=(-3, 103))
        axes[1, j].set(xlabel="step", ylabel="A_bar (trimmed mean |gap|)")
        _legend(axes[0, j], 7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def final_bars(summary: dict[str, dict], path: str, title: str, keys=None) -> None:
    """Final accuracy per run with +-1 std error bars.

    ``keys`` default: ``acc_test``, or where the runs have none (MOPD,
    continual) every per-domain ``acc_test_<d>`` as grouped bars. The teacher
    and the student init are lines (one key), or the init a dotted line per
    domain in its bar colour (several keys).
    """
    if keys is None:
        has_test = any("acc_test" in s for s in summary.values())
        keys = ["acc_test"] if has_test else aggregate.domain_keys(summary)
    runs = [
        n for n in summary if n not in aggregate.REFERENCES and any(k in summary[n] for k in keys)
    ]
    fig, ax = plt.subplots(figsize=(max(5, (0.5 + 0.15 * len(keys)) * len(runs) + 2), 4))
    width = 0.8 / max(1, len(keys))
    for j, key in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(runs))]
        stats = [summary[n].get(key) or (0.0, 0.0, 0) for n in runs]
        label = key.removeprefix("acc_test_") if len(keys) > 1 else None
        bars = ax.bar(
            xs,
            [100 * m for m, _, _ in stats],
            width,
            yerr=[100 * d for _, d, _ in stats],
            capsize=3,
            alpha=0.8,
            label=label,
        )
        init = summary.get("student_init", {}).get(key)
        if len(keys) > 1 and init and runs:
            ax.hlines(
                100 * init[0],
                xs[0] - width / 2,
                xs[-1] + width / 2,
                linestyles=":",
                colors=[bars.patches[0].get_facecolor()],
                label=f"init {label}",
            )
    for ref, style in (("teacher", "--"), ("student_init", ":")):
        if len(keys) == 1 and keys[0] in summary.get(ref, {}):
            ax.axhline(100 * summary[ref][keys[0]][0], ls=style, color="k", label=ref)
    ax.set_xticks(range(len(runs)), [summary[n]["label"] for n in runs], rotation=30, ha="right")
    what = keys[0].removeprefix("acc_") if len(keys) == 1 else "test"
    ax.set(ylabel=f"{what} accuracy % (mean ± std over seeds)", title=title)
    _legend(ax, 8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
