"""The host side of training: loops, training-state checkpoints, parameter files, metric sinks.

loop           SFT and on-policy distillation loops, hooks, SIGTERM handling
checkpoints    per-stage orbax training-state checkpoints and resume
params_io      finished models' parameter files, tree digests and checksums
metric_writer  metrics.jsonl and TensorBoard
"""

from dopd_jax.trainer import checkpoints, loop, metric_writer, params_io
from dopd_jax.trainer.loop import (
    Interrupted,
    LoopHooks,
    make_optimizer,
    run_distill,
    run_sft,
    sigterm_flag,
)

__all__ = [
    "Interrupted",
    "LoopHooks",
    "checkpoints",
    "loop",
    "make_optimizer",
    "metric_writer",
    "params_io",
    "run_distill",
    "run_sft",
    "sigterm_flag",
]
