"""Pure, jit-compiled step functions, in the order of one on-policy step.

    rollout     the student samples responses (prefill + scan decode)
    sampling    temperature / top-k / top-p / greedy token choice
    scoring     teacher-forced logits of every pass a method declares
    distill     rollout_step -> score_step -> update_step, distill_step
    microbatch  fused score + update in micro-batches (paper scale)
    sft         supervised fine-tuning step

Each is ``(state, teachers, batch, key) -> (state, metrics)``-shaped over
pytrees, with static configuration bound by ``functools.partial`` and one
``jax.jit`` call site (``make_distill_fns``, ``make_sft_fn``,
``make_microbatched_update``).
"""

from dopd_jax.data.batches import PromptBatch, SFTBatch
from dopd_jax.state import TrainState, init_state
from dopd_jax.steps import distill, microbatch, rollout, sampling, scoring, sft
from dopd_jax.steps.distill import (
    DistillBatch,
    DistillFns,
    DistillSpec,
    apply_gradients,
    distill_step,
    lean_spec,
    make_distill_fns,
    rollout_step,
    score_step,
    update_step,
)
from dopd_jax.steps.microbatch import make_microbatched_update, microbatched_update_step
from dopd_jax.steps.rollout import Rollout, SamplerConfig, repeat_rows, sample
from dopd_jax.steps.scoring import forward_logits, teacher_forced_logits
from dopd_jax.steps.sft import make_sft_fn, sft_step

__all__ = [
    "DistillBatch",
    "DistillFns",
    "DistillSpec",
    "PromptBatch",
    "Rollout",
    "SFTBatch",
    "SamplerConfig",
    "TrainState",
    "apply_gradients",
    "distill",
    "distill_step",
    "forward_logits",
    "init_state",
    "lean_spec",
    "make_distill_fns",
    "make_microbatched_update",
    "make_sft_fn",
    "microbatch",
    "microbatched_update_step",
    "repeat_rows",
    "rollout",
    "rollout_step",
    "sample",
    "sampling",
    "score_step",
    "scoring",
    "sft",
    "sft_step",
    "teacher_forced_logits",
    "update_step",
]
