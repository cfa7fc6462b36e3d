"""Command line: an experiment module over its seeds and variants, then tables and figures.

    python -m dopd_jax.sweep --config experiments/NAME.py --workdir runs/NAME

runs every cell (``ROOT/<variant>/s<seed>_t<teacher_seed>``, an ordinary
experiment workdir) that has not finished, resuming an interrupted one, and
writes ``ROOT/results.md`` (mean ± std over seeds per run, per variant, and
variants x runs), ``ROOT/summary.json`` and PNG figures (accuracy and entropy
over steps, DOPD regime fractions and ``A_bar``, final accuracy with error
bars). The axes default to the module's ``VARIANTS``, ``SEEDS`` (0, 1, 2) and
``TEACHER_SEEDS`` (0); ``--seeds 0,1,2,3``, ``--teacher_seeds 0,1`` and
``--variants a,b`` override them (a variant that holds commas, such as
``mislead=0,student=small``, is recognised from the module's ``VARIANTS``); ``--report_only``
redraws from what exists. ``--against RUN`` (default: the module's
``PAIRED_AGAINST``) adds a table of each run's per-seed difference from RUN.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from dopd_jax.pipeline import compile_cache

_CONFIG = flags.DEFINE_string("config", None, "Experiment module path (no :arg).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root directory of the sweep.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds (student init, data order, sampling).")
_TEACHER_SEEDS = flags.DEFINE_list("teacher_seeds", None, "Teacher seeds.")
_VARIANTS = flags.DEFINE_list("variants", None, "get_config arguments ('default' = none).")
_COMPILE_CACHE = flags.DEFINE_string("compile_cache", "auto", compile_cache.FLAG_HELP)
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rewrite the report.")
_AGAINST = flags.DEFINE_string(
    "against", None, "Run to compare every other run with, seed by seed (module's PAIRED_AGAINST)."
)


def _ints(name: str, xs) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in xs)
    except ValueError as e:
        raise ValueError(f"--{name} must be comma-separated integers, got {','.join(xs)!r}") from e


def axes_from_flags(path: str) -> dict:
    from dopd_jax.pipeline import sweep

    axes = sweep.module_axes(path)
    if _SEEDS.value is not None:
        axes["seeds"] = _ints("seeds", _SEEDS.value)
    if _TEACHER_SEEDS.value is not None:
        axes["teacher_seeds"] = _ints("teacher_seeds", _TEACHER_SEEDS.value)
    if _VARIANTS.value is not None:
        axes["variants"] = sweep.split_variants(_VARIANTS.value, axes["variants"])
    return axes


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from dopd_jax.pipeline import config_checks, sweep

    try:
        axes = axes_from_flags(_CONFIG.value)
        cells = sweep.plan(axes["variants"], axes["seeds"], axes["teacher_seeds"])
        for cell in cells:  # every cell's config is valid before anything runs
            config_checks.validate(sweep.cell_config(_CONFIG.value, cell, {}))
    except ValueError as e:
        sys.exit(f"error: {e}")
    if _REPORT_ONLY.value:
        text = sweep.write_report(_CONFIG.value, _WORKDIR.value, cells, _AGAINST.value)
    else:
        try:
            compile_cache.enable(compile_cache.cache_dir(_COMPILE_CACHE.value, _WORKDIR.value))
            text = sweep.run_sweep(_CONFIG.value, _WORKDIR.value, cells, against=_AGAINST.value)
        except ValueError as e:
            sys.exit(f"error: {e}")
    print(text)


def cli() -> None:
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    cli()
