"""Command line: ``python -m dopd_jax.run --config experiments/NAME.py[:ARG] --workdir DIR``.

Any config field can be overridden with ``--config.FIELD=VALUE``; an unknown
field is rejected, with an error naming it, before anything runs. Progress is
shown as it runs; metrics go to ``DIR/metrics.jsonl`` and TensorBoard files
under ``DIR/tb``; the run ends by printing the results table and writing
``DIR/results.json``. Restarting with the same workdir resumes from the last
finished stage.

Multi-process: start one such command per process, each with
``--config.distributed.num_processes=N --config.distributed.process_id=I
--config.distributed.coordinator_address=HOST:PORT`` and the same workdir.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dopd_jax.pipeline import compile_cache, config_checks

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment module (path[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs and resume.")
_COMPILE_CACHE = flags.DEFINE_string("compile_cache", "auto", compile_cache.FLAG_HELP)


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
            compile_cache.enable(compile_cache.cache_dir(_COMPILE_CACHE.value, _WORKDIR.value))
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


def unknown_override(argv: list[str]) -> str | None:
    """An error naming the first ``--config.FIELD`` override that is no field of the
    config (ml_collections would raise a bare AttributeError), or None.

    A named variant (``distill.variants.NAME``) holds only the fields its module set:
    set others in the module (``config.add_variants``)."""
    from dopd_jax.pipeline import config as config_lib

    path, names = None, []
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config."):
            names.append(arg[len("--config.") :].split("=", 1)[0])
    if path is None or not names:
        return None
    file, _, module_arg = path.partition(":")
    try:
        cfg = config_lib.load_experiment(file, module_arg or None)
    except Exception:  # noqa: BLE001 - the flag parser reports a bad module itself
        return None
    for name in names:
        node, walked = cfg, "config"
        for part in name.split("."):
            fields = node.keys() if hasattr(node, "keys") else []
            if part not in fields:
                return (
                    f"--config.{name}: {walked} has no field {part!r}"
                    + (f" (fields: {', '.join(sorted(fields))})" if fields else "")
                    + (
                        "; a named variant holds only the fields its module set"
                        if walked.startswith("config.distill.variants.")
                        else ""
                    )
                )
            node, walked = node[part], f"{walked}.{part}"
    return None


def cli() -> None:
    flags.mark_flags_as_required(["config", "workdir"])
    try:
        app.run(main)
    except AttributeError:  # ml_collections' answer to an override of a missing field
        error = unknown_override(sys.argv)  # loads the module again, on failure only
        if error:
            sys.exit(f"error: {error}")
        raise


if __name__ == "__main__":
    cli()
