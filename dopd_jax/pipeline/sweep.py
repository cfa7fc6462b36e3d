"""An experiment module over variants x teacher seeds x seeds: run, resume, report.

Each cell is an ordinary experiment workdir,
``ROOT/<variant>/s<seed>_t<teacher_seed>``, run in this process one after
another (same shapes, so compiled steps are reused). A cell whose
``results.json`` exists is skipped, and an interrupted cell resumes from its
last finished stage, so re-running the same command finishes the sweep.

Stages are shared where their inputs are equal: a cell whose teacher (or
student warm-up) config equals a finished cell's loads that cell's model
(``workdir:`` source) instead of training it again. So seeds train the teacher
once per teacher seed, and variants that change only the distillation share
both models.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from dopd_jax.pipeline import aggregate
from dopd_jax.pipeline import config as config_lib

DEFAULT_SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Cell:
    variant: str  # get_config argument ("" = the module's default)
    seed: int
    teacher_seed: int

    def workdir(self, root: str) -> str:
        return os.path.join(root, self.variant or "default", f"s{self.seed}_t{self.teacher_seed}")


def module_axes(path: str) -> dict:
    """The module's ``VARIANTS``, ``SEEDS``, ``TEACHER_SEEDS`` and ``PAIRED_AGAINST``
    (defaults: one variant, seeds 0, 1, 2, teacher seed 0, no paired table)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sweep_module", path)
    if spec is None or not os.path.exists(path):
        raise ValueError(f"experiment module {path!r} not found")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return dict(
        variants=tuple(getattr(mod, "VARIANTS", ("",))),
        seeds=tuple(getattr(mod, "SEEDS", DEFAULT_SEEDS)),
        teacher_seeds=tuple(getattr(mod, "TEACHER_SEEDS", (0,))),
        against=getattr(mod, "PAIRED_AGAINST", ""),
    )


def split_variants(pieces, known) -> tuple[str, ...]:
    """``--variants`` pieces (split at commas) regrouped into variants.

    A variant may itself hold commas (``mislead=0,student=small``): consecutive
    pieces are joined into the longest run that is one of the module's
    ``known`` variants; any other piece is a variant on its own. ``default``
    is the module's default ("").
    """
    pieces, known, out, i = list(pieces), set(known), [], 0
    while i < len(pieces):
        j = next(
            (j for j in range(len(pieces), i + 1, -1) if ",".join(pieces[i:j]) in known), i + 1
        )
        v = ",".join(pieces[i:j])
        out.append("" if v == "default" else v)
        i = j
    return tuple(out)


def plan(variants, seeds, teacher_seeds) -> list[Cell]:
    """Cells in run order: variant, then teacher seed, then seed."""
    if not seeds or not teacher_seeds or not variants:
        raise ValueError("a sweep needs at least one variant, seed and teacher seed")
    for name, xs in (("seeds", seeds), ("teacher seeds", teacher_seeds), ("variants", variants)):
        if len(set(xs)) != len(xs):
            raise ValueError(f"duplicate {name}: {list(xs)}")
    return [Cell(v, s, t) for v in variants for t in teacher_seeds for s in seeds]


def _stage_key(c: ml_collections.ConfigDict, block: str) -> str:
    """What an SFT stage's output depends on (its block, the task, tokenizer, seeds).

    ``task.priv_form`` is left out: only distillation and evaluation read it.
    """
    seed = c.teacher_seed if block == "teacher" else c.seed
    task = {k: v for k, v in c.task.to_dict().items() if k != "priv_form"}
    parts = dict(
        block=c[block].to_dict(),
        task=task,
        tokenizer=c.tokenizer.to_dict(),
        task_seed=c.task_seed,
        seed=seed,
    )
    return json.dumps(config_lib.to_json_dict(ml_collections.ConfigDict(parts)), sort_keys=True)


def cell_config(path: str, cell: Cell, finished: dict[str, str]) -> ml_collections.ConfigDict:
    """The cell's config: the module's ``get_config(variant)`` with the cell's seeds;
    SFT stages equal to a finished cell's (``finished``: stage key -> workdir) load it."""
    c = config_lib.load_experiment(path, cell.variant or None)
    c.seed, c.teacher_seed = cell.seed, cell.teacher_seed
    for block in ("teacher", "student"):
        key = _stage_key(c, block)
        if c[block].source == "scratch" and (block, key) in finished:
            c[block].source = "workdir:" + finished[(block, key)]
    return c


def _register(c, workdir: str, finished: dict) -> None:
    for block in ("teacher", "student"):
        if c[block].source == "scratch":
            finished.setdefault((block, _stage_key(c, block)), workdir)


def run_sweep(
    path: str,
    root: str,
    cells: list[Cell],
    *,
    log=print,
    progress=None,
    finished=None,
    against: str | None = None,
) -> str:
    """Runs every unfinished cell, then writes the report; returns its markdown.

    ``finished`` (stage key -> workdir) may carry finished stages in from other
    sweeps (e.g. several modules' smoke runs sharing one teacher); it is updated.
    """
    from dopd_jax.pipeline.runner import run_experiment

    finished = {} if finished is None else finished
    for i, cell in enumerate(cells):
        workdir = cell.workdir(root)
        c = cell_config(path, cell, finished)
        if aggregate.load_cell(workdir) is not None:
            log(f"[{i + 1}/{len(cells)}] {workdir}: finished, skipped")
        else:
            log(f"[{i + 1}/{len(cells)}] {workdir}")
            run_experiment(c, workdir, progress=progress, log=log)
        _register(c, workdir, finished)
    return write_report(path, root, cells, against)


def write_report(path: str, root: str, cells: list[Cell], against: str | None = None) -> str:
    """``ROOT/results.md`` (tables), ``ROOT/summary.json`` and PNG figures per variant.

    ``against`` (default: the module's ``PAIRED_AGAINST``; "" for none) names a
    run every other run is also compared with seed by seed (``paired_differences``).
    """
    from dopd_jax.pipeline import figures

    if against is None:
        against = module_axes(path)["against"]
    variants = list(dict.fromkeys(c.variant for c in cells))
    seeds = sorted({c.seed for c in cells})
    teacher_seeds = sorted({c.teacher_seed for c in cells})
    lines = [f"# Sweep of `{path}`", ""]
    lines.append(
        f"Seeds {seeds}, teacher seeds {teacher_seeds}; mean ± std (sample) over the "
        "finished cells; accuracies greedy without p on each evaluation set; "
        "`gap closed` = (acc - init) / (teacher - init) per cell."
    )
    summaries, json_out = {}, {}
    for v in variants:
        mine = [c for c in cells if c.variant == v]
        results = [r for r in (aggregate.load_cell(c.workdir(root)) for c in mine) if r]
        name = v or "default"
        lines += ["", f"## {name}", ""]
        if not results:
            lines.append("(no finished cell)")
            continue
        summary = aggregate.summarize(results)
        summaries[v] = summary
        json_out[name] = summary
        lines.append(aggregate.markdown_table(summary, len(mine)))
        diffs = aggregate.paired_differences(results, against) if against in summary else {}
        if diffs:  # none when the cells ran nothing besides ``against``
            label = summary[against]["label"]
            lines += ["", f"Paired against {label}: per-seed difference, mean ± std:", ""]
            lines.append(aggregate.paired_table(diffs, label))
        if len(teacher_seeds) > 1:
            lines += ["", "By teacher seed (test %, mean ± std over seeds):", ""]
            lines.append(_teacher_seed_table(root, mine))
        lines += ["", *_figures(figures, root, name, mine, summary)]
    if len(variants) > 1:
        head = "normalized mean" if aggregate.headline_key(summaries) == "norm_mean" else "test %"
        lines += ["", f"## Variants ({head})", "", aggregate.variant_table(summaries)]
    text = "\n".join(lines) + "\n"
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump(json_out, f, indent=1)
    return text


def _teacher_seed_table(root: str, cells: list[Cell]) -> str:
    by_t = {}
    for t in sorted({c.teacher_seed for c in cells}):
        rs = [aggregate.load_cell(c.workdir(root)) for c in cells if c.teacher_seed == t]
        rs = [r for r in rs if r]
        if rs:
            by_t[f"teacher seed {t}"] = aggregate.summarize(rs)
    return aggregate.variant_table(by_t)


def _figures(figures, root, name, cells, summary) -> list[str]:
    curves = [aggregate.load_curves(c.workdir(root)) for c in cells]
    labels = {n: s["label"] for n, s in summary.items() if n not in aggregate.REFERENCES}
    out = []
    f = f"{name}_curves.png"
    figures.learning_curves(curves, labels, os.path.join(root, f), name)
    out.append(f"![accuracy and entropy over steps]({f})")
    f = f"{name}_routing.png"
    if figures.routing(curves, labels, os.path.join(root, f), name):
        out.append(f"![DOPD regime fractions and A_bar]({f})")
    f = f"{name}_final.png"
    figures.final_bars(summary, os.path.join(root, f), name)
    out.append(f"![final test accuracy]({f})")
    return out
