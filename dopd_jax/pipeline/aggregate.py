"""Seed statistics of a sweep: results.json and metrics.jsonl of many workdirs -> tables.

Pure functions over the plain dicts the runner writes, so a notebook can call
them on any set of workdirs. A *cell* is one workdir (one variant, seed and
teacher seed); rows are the reference models and the runs, matched by name.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from dopd_jax.pipeline import report

REFERENCES = ("teacher", "student_init")
ROW_KEYS = (
    "acc_test",
    "acc_hard",
    "acc_ood",
    "acc_priv",
)  # accuracy columns in that order when present


def load_cell(workdir: str) -> dict | None:
    """``results.json`` of a workdir, or None while the experiment has not finished."""
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_curves(workdir: str) -> dict[str, list[dict]]:
    """Per distillation run, its logged metric records (``metrics.jsonl``), in step order."""
    path = os.path.join(workdir, "metrics.jsonl")
    runs: dict[str, list[dict]] = {}
    if not os.path.exists(path):
        return runs
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            name = r.get("run", "")
            if name.startswith("distill/"):
                runs.setdefault(name[len("distill/") :], []).append(r)
    return {k: sorted(v, key=lambda r: r["step"]) for k, v in runs.items()}


def gap_closed(acc: float | None, init: float | None, teacher: float | None) -> float | None:
    """``(acc - init) / (teacher - init)``: share of the init-to-teacher gap closed."""
    if None in (acc, init, teacher) or teacher <= init:
        return None
    return (acc - init) / (teacher - init)


def _cell_rows(results: dict, key: str = "acc_test") -> dict[str, dict]:
    """Row name -> {metric: value} of one cell, ``gap_closed`` included for runs
    (runs in the config's ``distill.methods`` order)."""
    refs, runs = results.get("references", {}), results.get("methods", {})
    shown = report.shown_references(results)
    rows = {name: dict(refs[name]) for name in REFERENCES if name in refs and name in shown}
    init, teacher = refs.get("student_init", {}).get(key), refs.get("teacher", {}).get(key)
    order = results.get("config", {}).get("distill", {}).get("methods", [])
    names = [n for n in order if n in runs] + [n for n in runs if n not in order]
    for name in names:
        r = runs[name]
        row = {k: v for k, v in r.items() if isinstance(v, (int, float))}
        for k in ("student_entropy", "kl_to_teacher", "frac_HS"):
            if k in r.get("final", {}):
                row[k] = r["final"][k]
        row["gap_closed"] = gap_closed(r.get(key), init, teacher)
        row["label"] = r.get("label") or name
        rows[name] = row
    if results.get("config", {}).get("task", {}).get("priv_form") == "none":
        for row in rows.values():  # no privileged input: acc_priv repeats the first set
            row.pop("acc_priv", None)
    teachers = results.get("config", {}).get("distill", {}).get("teachers") or {}
    if teachers:  # MOPD: the normalized score against each domain's teacher
        for name, scores in report.normalized_scores(results, sorted(teachers.items())).items():
            rows[name].update({f"norm_{d}": v for d, v in scores.items()})
    return rows


def domain_keys(summary: dict[str, dict]) -> list[str]:
    """The per-domain test accuracies (``acc_test_<d>``) some row of a summary has."""
    return sorted({k for s in summary.values() for k in s if k.startswith("acc_test_")})


def _columns(summary: dict[str, dict]) -> tuple[list[str], list[str]]:
    """The accuracy keys (ROW_KEYS, then per-domain ``acc_test_<d>``) and the
    normalized-score keys (per domain, then ``norm_mean``) present in a summary."""
    present = [k for s in summary.values() for k in s]
    acc = [k for k in ROW_KEYS if k in present] + domain_keys(summary)
    norm = sorted({k for k in present if k.startswith("norm_") and k != "norm_mean"})
    return acc, norm + ["norm_mean"] * bool(norm)


def mean_std(values) -> tuple[float, float, int] | None:
    """Mean, sample standard deviation (0 for one value) and count, ignoring None."""
    xs = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return None
    std = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return float(np.mean(xs)), std, len(xs)


def summarize(cells: list[dict]) -> dict[str, dict]:
    """Row -> metric -> (mean, std, n) over the cells (each a results.json dict).

    Row order: the references, then the runs in the order of the first cell.
    """
    per_cell = [_cell_rows(c) for c in cells]
    names: list[str] = []
    for rows in per_cell:
        names += [n for n in rows if n not in names]
    out = {}
    for name in names:
        present = [rows[name] for rows in per_cell if name in rows]
        keys = sorted({k for r in present for k, v in r.items() if k != "label"})
        stats = {k: mean_std([r.get(k) for r in present]) for k in keys}
        out[name] = {k: v for k, v in stats.items() if v is not None}
        out[name]["label"] = present[0].get("label", name)
    return out


def _fmt(stat, scale: float = 100.0, digits: int = 1) -> str:
    if stat is None:
        return "-"
    mean, std, n = stat
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


# Metric columns after the accuracies: (title, key, scale, digits).
_METRIC_COLUMNS = (
    ("gap closed %", "gap_closed", 100.0, 1),
    ("entropy", "student_entropy", 1.0, 3),
    ("KL(T)", "kl_to_teacher", 1.0, 3),
)


def markdown_table(summary: dict[str, dict], n_seeds: int) -> str:
    """Mean ± std over seeds, one row per reference model and run; a metric column
    no row has (``gap closed`` where there is no single test set) is left out."""
    acc_keys, norm_keys = _columns(summary)
    metrics = [m for m in _METRIC_COLUMNS if any(m[1] in s for s in summary.values())]
    cols = [k.removeprefix("acc_") + " %" for k in acc_keys]
    cols += ["normalized " + k.removeprefix("norm_") for k in norm_keys]
    cols += [title for title, *_ in metrics] + ["seeds"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for s in summary.values():
        n = max((v[2] for k, v in s.items() if k != "label"), default=0)
        cells = [_fmt(s.get(k)) for k in acc_keys]
        cells += [_fmt(s.get(k), 1.0, 3) for k in norm_keys]
        cells += [_fmt(s.get(key), scale, digits) for _, key, scale, digits in metrics]
        cells.append(f"{n}/{n_seeds}")
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline_key(summaries: dict[str, dict[str, dict]]) -> str:
    """``norm_mean`` where some row has it (several evaluation sets), else ``acc_test``."""
    rows = [r for s in summaries.values() for r in s.values()]
    return "norm_mean" if any("norm_mean" in r for r in rows) else "acc_test"


def variant_table(summaries: dict[str, dict[str, dict]], key: str | None = None) -> str:
    """Variants x runs: ``key`` mean ± std, one row per variant (the robustness map).

    ``key`` defaults to :func:`headline_key`; a normalized key prints as a fraction.
    """
    key = key or headline_key(summaries)
    scale, digits = (1.0, 3) if key.startswith("norm_") else (100.0, 1)
    runs: list[str] = []
    for s in summaries.values():
        runs += [n for n in s if n not in runs]
    labels = {}
    for s in summaries.values():
        labels.update({n: r["label"] for n, r in s.items() if n not in labels})
    lines = [
        "| variant | " + " | ".join(labels[n] for n in runs) + " |",
        "|---" * (len(runs) + 1) + "|",
    ]
    for variant, s in summaries.items():
        cells = [_fmt(s.get(n, {}).get(key), scale, digits) for n in runs]
        lines.append(f"| {variant or 'default'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(cells: list[dict], against: str) -> dict[str, dict]:
    """Row -> metric -> (mean, std, n) of the per-cell difference ``row - against``.

    Seeds move every row of a cell together (a weak init lowers them all), so
    the spread of a paired difference is the one to hold a gap against. Rows are
    the runs other than ``against`` and the MOPD domain teachers; a cell without
    either row is skipped. ``ahead`` counts the cells where the row leads on its
    headline metric (``norm_mean`` when present, else ``acc_test``).
    """
    per_cell = [_cell_rows(c) for c in cells]
    teachers = {ref.removeprefix("run:") for c in cells for ref in report.domain_teacher_refs(c)}
    out: dict[str, dict] = {}
    for rows in per_cell:
        if against not in rows:
            continue
        for name, row in rows.items():
            if name in REFERENCES or name in teachers or name == against:
                continue
            d = out.setdefault(name, {"label": row["label"], "diffs": {}})
            for k, v in row.items():
                base = rows[against].get(k)
                if k.startswith(("acc_", "norm_")) and v is not None and base is not None:
                    d["diffs"].setdefault(k, []).append(v - base)
    result = {}
    for name, d in out.items():
        stats = {k: mean_std(v) for k, v in d["diffs"].items()}
        head = "norm_mean" if "norm_mean" in d["diffs"] else "acc_test"
        stats = {k: v for k, v in stats.items() if v is not None}
        stats["ahead"] = sum(x > 0 for x in d["diffs"].get(head, []))
        stats["label"] = d["label"]
        result[name] = stats
    return result


def paired_table(diffs: dict[str, dict], against_label: str) -> str:
    """The paired differences as markdown: mean ± std over seeds, and seeds ahead."""
    summary = {n: {k: v for k, v in s.items() if k != "ahead"} for n, s in diffs.items()}
    acc_keys, norm_keys = _columns(summary)
    cols = [f"Δ {k.removeprefix('acc_')} points" for k in acc_keys]
    cols += [f"Δ normalized {k.removeprefix('norm_')}" for k in norm_keys]
    head = "normalized mean" if norm_keys else "test"
    cols.append(f"ahead of {against_label} ({head})")
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for s in diffs.values():
        n = max((v[2] for k, v in s.items() if isinstance(v, tuple)), default=0)
        cells = [_fmt(s.get(k)) for k in acc_keys]
        cells += [_fmt(s.get(k), 1.0, 3) for k in norm_keys]
        cells.append(f"{s['ahead']}/{n} seeds")
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that logged ``key``."""
    pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, vals = zip(*pts)
    return np.asarray(steps), np.asarray(vals, dtype=np.float64)


def mean_curve(per_cell: list[list[dict]], key: str):
    """Mean and std over cells at the steps every cell logged ``key`` (None if none)."""
    curves = [curve(r, key) for r in per_cell if r]
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return None
    common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
    if not common:
        return None
    rows = [np.asarray([dict(zip(s.tolist(), v))[t] for t in common]) for s, v in curves]
    stack = np.stack(rows)
    return (
        np.asarray(common),
        stack.mean(0),
        stack.std(0, ddof=1) if len(rows) > 1 else 0 * stack[0],
    )
