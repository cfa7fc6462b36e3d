"""Generated privileged-information tasks, batch encoding and data streams.

    tasks     Example, DOMAINS, PRIVILEGED_FORMS, generate, verify
    encode    PromptBatch / SFTBatch from examples (NumPy)
    pipeline  TrainStream (resumable, multi-process), eval_set
"""
from dopd_jax.data.encode import PromptBatch, SFTBatch, encode_prompts, encode_sft
from dopd_jax.data.pipeline import TrainStream, eval_set
from dopd_jax.data.tasks import (
    DOMAINS, PRIVILEGED_FORMS, SPLITS, Example, extract_answer, generate,
    split_of, verify)
