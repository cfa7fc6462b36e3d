"""The end-of-run results table."""

from __future__ import annotations

METRIC_COLUMNS = (
    ("entropy", 8, "student_entropy"),
    ("KL(T+p)", 8, "kl_to_priv_teacher"),
    ("KL(T)", 7, "kl_to_teacher"),
)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:5.1f}"


def _num(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _regimes(final: dict) -> str:
    if "frac_HS" not in final:
        return "-"
    return " ".join(f"{r}={100 * final['frac_' + r]:.0f}%" for r in ("LH", "LL", "HT", "HS"))


def _acc_columns(results: dict) -> list[str]:
    """``acc_<set>`` keys of the evaluation sets, in order, then ``acc_priv`` (unless the
    task has no privileged input); avg@k after."""
    first = next(iter(results.get("references", {}).values()), None)
    first = first or next(iter(results.get("methods", {}).values()), {})
    sets = [k for k in first if k.startswith("acc_") and k != "acc_priv"]
    avg = [k for k in first if k.startswith("avg") and "_" in k]
    if results.get("config", {}).get("task", {}).get("priv_form") == "none":
        return sets + avg  # no privileged input: acc_priv would repeat the first set
    return sets + ["acc_priv"] + avg


def _title(key: str) -> str:
    """``acc_test`` -> ``test%``; ``avg4_test`` -> ``test@4%``."""
    prefix, name = key.split("_", 1)
    return f"{name}%" if prefix == "acc" else f"{name}@{prefix[len('avg') :]}%"


def _width(key: str) -> int:
    return max(6, len(_title(key)))


def domain_teacher_refs(results: dict) -> list[str]:
    """The MOPD domain teachers of a results dict: the experiment's and each run's own."""
    distill = results.get("config", {}).get("distill", {}) or {}
    maps = [distill.get("teachers") or {}]
    maps += [(v or {}).get("teachers") or {} for v in (distill.get("variants") or {}).values()]
    return [ref for m in maps for ref in m.values()]


def shown_references(results: dict) -> list[str]:
    """The reference rows a table shows: all of them, except the experiment's own
    teacher when the run has domain teachers (MOPD) and none of them is it: that
    teacher then scores nobody and only fills the pipeline's teacher stage."""
    refs = list(results.get("references", {}))
    domain = domain_teacher_refs(results)
    if domain and "teacher" not in domain:
        refs = [r for r in refs if r != "teacher"]
    return refs


def format_table(results: dict) -> str:
    """Renders ``results.json`` content as a fixed-width text table.

    Rows: the reference models (teacher, student init; ``shown_references``) and
    one row per run.
    Accuracies are greedy on each evaluation set without privileged context,
    ``priv`` is the first set with p; ``avgK_<set>`` columns are sampled avg@K.
    """
    cols = _acc_columns(results)
    head = (
        f"{'model':<22} "
        + " ".join(f"{_title(c):>{_width(c)}}" for c in cols)
        + " "
        + " ".join(f"{t:>{w}}" for t, w, _ in METRIC_COLUMNS)
        + f" {'time s':>7}  regimes (DOPD)"
    )
    lines = [head, "-" * len(head)]
    for name in shown_references(results):
        ref = results["references"][name]
        accs = " ".join(f"{_pct(ref.get(c)):>{_width(c)}}" for c in cols)
        dashes = " ".join(f"{'-':>{w}}" for _, w, _ in METRIC_COLUMNS)
        lines.append(f"{name:<22} {accs} {dashes} {'-':>7}  -")
    for name, r in results.get("methods", {}).items():
        f = r.get("final", {})
        accs = " ".join(f"{_pct(r.get(c)):>{_width(c)}}" for c in cols)
        metrics = " ".join(f"{_num(f.get(key)):>{w}}" for _, w, key in METRIC_COLUMNS)
        lines.append(
            f"{r.get('label') or name:<22} {accs} {metrics} "
            f"{_num(r.get('wall_time_s'), '{:.0f}'):>7}  {_regimes(f)}"
        )
        if r.get("warnings"):
            lines.append(f"{'':<22} warnings: {', '.join(r['warnings'])}")
        if r.get("stopped"):
            s = r["stopped"]
            lines.append(f"{'':<22} stopped early after step {s['step']}: {s['reason']}")
    stages = format_stage_times(results.get("wall_times_s", {}))
    normalized = format_normalized(results)
    return "\n".join(lines + [stages] * bool(stages) + (["", normalized] if normalized else []))


def format_stage_times(times: dict[str, float]) -> str:
    """One line: the wall seconds of the data/tokenizer, SFT and reference-eval stages."""
    shown = [(k, v) for k, v in times.items() if not k.startswith("distill/")]
    if not shown:
        return ""
    return "stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in shown)


def normalized_scores(results: dict, domain_teachers) -> dict:
    """MOPD's normalized score of every run (methods.md section 7).

    Per domain d, ``(s_d - s_SFT) / (s_teacher_d - s_SFT)`` on the evaluation set
    ``test_<d>`` (greedy, no p), with ``s_SFT`` the student init and
    ``s_teacher_d`` d's teacher (``distill.teachers``). None where a teacher
    does not beat the student init on its domain (the ratio has no meaning:
    e.g. an init already at 100%) or a score is missing. ``mean`` averages the
    defined domains uniformly (None if there are none); the table shows which
    domains it covers.

    Returns:
      ``{run: {"<domain>": score | None, ..., "mean": score | None}}``.
    """
    refs, runs = results.get("references", {}), results.get("methods", {})
    sft = refs.get("student_init", {})
    out = {}
    for name, r in runs.items():
        row = {}
        for d, source in domain_teachers:
            key = f"acc_test_{d}"
            teacher = refs.get("teacher", {}) if source == "teacher" else runs.get(source[4:], {})
            s, s0, st = r.get(key), sft.get(key), teacher.get(key)
            ok = None not in (s, s0, st) and st > s0
            row[d] = (s - s0) / (st - s0) if ok else None
        scores = [v for v in row.values() if v is not None]
        row["mean"] = sum(scores) / len(scores) if scores else None
        out[name] = row
    return out


def format_normalized(results: dict) -> str:
    """The normalized-score table (one row per run, one column per domain, then mean)."""
    table = results.get("normalized")
    if not table:
        return ""
    domains = [d for d in next(iter(table.values())) if d != "mean"]
    head = f"{'normalized score':<22} " + " ".join(f"{d[:8]:>8}" for d in domains + ["mean"])
    lines = [head, "-" * len(head)]
    for name, row in table.items():
        label = results["methods"][name].get("label") or name
        cells = " ".join(f"{_num(row[d]):>8}" for d in domains + ["mean"])
        lines.append(f"{label:<22} {cells}")
    return "\n".join(lines)
