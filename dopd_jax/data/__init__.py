"""Task data: the Example record, task sources, verifiers, encoding into batches.

example         Example: prompt x, privileged forms of p, gold response, answer, domain
sources         TaskSpec -> TaskData (generated, jsonl, tfds, or an import path)
generated       the arith / sort / linear families (on demand, infinite)
jsonl           user data, one JSON object per line
tfds_io         TFDS (array_record) datasets: write, load, decode
grain_iterator  the resumable, multi-process grain training iterator over a split
prepare         CLI: write a TFDS dataset from any source
verifiers       exact, marker, last_number, boxed, or an import path
streams         the resumable stream of generated training batches
batches         PromptBatch / SFTBatch, the batch types of the steps
encode          Examples -> fixed-shape batches (NumPy)
"""

from dopd_jax.data.batches import PromptBatch, SFTBatch
from dopd_jax.data.encode import encode_prompts, encode_sft
from dopd_jax.data.example import Example
from dopd_jax.data.streams import TrainStream, eval_set

__all__ = [
    "Example",
    "PromptBatch",
    "SFTBatch",
    "TrainStream",
    "encode_prompts",
    "encode_sft",
    "eval_set",
]
