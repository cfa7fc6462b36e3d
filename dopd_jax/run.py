"""Command line: ``python -m dopd_jax.run --config experiments/NAME.py[:ARG] --workdir DIR``.

Any config field can be overridden with ``--config.FIELD=VALUE``; unknown
fields are rejected. Progress is shown as it runs; metrics go to
``DIR/metrics.jsonl`` and TensorBoard files under ``DIR/tb``; the run ends
by printing the results table and writing ``DIR/results.json``. Restarting
with the same workdir resumes from the last finished stage.

Multi-process: start one such command per process, each with
``--config.distributed.num_processes=N --config.distributed.process_id=I
--config.distributed.coordinator_address=HOST:PORT`` and the same workdir.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dopd_jax.pipeline import config_checks

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment module (path[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs and resume.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    cfg = _CONFIG.value
    try:
        config_checks.validate_distributed(cfg)
    except ValueError as e:
        sys.exit(f"error: {e}")
    distributed = _initialize_distributed(cfg.distributed)
    try:
        from dopd_jax.pipeline.runner import check_workdir, run_experiment

        try:
            config_checks.validate(cfg)  # counts devices: after jax.distributed.initialize
            check_workdir(_WORKDIR.value)
        except ValueError as e:
            sys.exit(f"error: {e}")
        try:
            run_experiment(cfg, _WORKDIR.value)
        except ValueError as e:  # bad input found while preparing (data, models)
            sys.exit(f"error: {e}")
    finally:
        if distributed:
            import jax

            jax.distributed.shutdown()


def _initialize_distributed(d) -> bool:
    """Joins ``jax.distributed`` when ``config.distributed.num_processes > 1``.

    Must run before any other JAX call. CPU devices use gloo collectives.

    Returns:
      whether this is a multi-process run.
    """
    if d.num_processes <= 1:
        return False
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=d.coordinator_address,
        num_processes=d.num_processes,
        process_id=d.process_id,
    )
    return True


def cli() -> None:
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    cli()
