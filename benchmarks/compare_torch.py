"""The peers' side of ``benchmarks.compare`` (a subprocess: PyTorch CPU threads of its own).

  python -m benchmarks.compare_torch --shape mid --models DIR --out FILE

Loads the student and teacher ``benchmarks.compare_jax.build`` wrote to DIR
(``transformers`` Qwen3, float32) and times, after a warm-up call:
  - the float32 matmul peak of ``torch.mm``;
  - Hugging Face ``generate``: the same prompts, KV cache on, pure sampling
    (temperature 1, top-k and top-p off), exactly ``new_tokens`` new tokens;
  - TRL ``DistillationTrainer`` (on-policy, reverse KL over the full vocabulary:
    ``beta=1``), gradient checkpointing off, one sample per prompt: the wall
    time of each optimizer step, from ``on_step_begin`` to ``on_step_end``
    (generation, teacher and student passes, backward, AdamW).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from benchmarks import compare_shapes, timing


def load(models_dir: str, role: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.join(models_dir, role), dtype=torch.float32
    )
    return model.eval()


def matmul_peak(sizes=(1024, 2048), repeats: int = 10) -> dict:
    """float32 GFLOP/s of ``torch.mm``: the best median over ``sizes``."""
    out = {}
    for n in sizes:
        a = torch.randn(n, n)
        t = timing.timed(lambda: torch.mm(a, a), repeats)
        out[str(n)] = {"gflops": 2 * n**3 / t["median"] / 1e9, "time_s": t}
    best = max(r["gflops"] for r in out.values())
    return {"gflops": best, "by_size": out, "threads": torch.get_num_threads()}


def bench_generate(s: compare_shapes.Shape, model, prompt_ids: np.ndarray) -> dict:
    ids = torch.from_numpy(prompt_ids).long()
    kw = dict(
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=s.new_tokens,
        min_new_tokens=s.new_tokens,
        pad_token_id=0,
        eos_token_id=1,
    )
    with torch.no_grad():
        out = model.generate(ids, **kw)
        assert out.shape == (s.batch, s.prompt + s.new_tokens), out.shape
        t = timing.timed(lambda: model.generate(ids, **kw), s.repeats)
    return {"time_s": t, "tokens_per_s": s.batch * s.new_tokens / t["median"]}


def word_tokenizer(vocab: int):
    """A tokenizer whose word ``t<i>`` is id i (0 pad, 1 eos), for TRL's text prompts."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="t0", eos_token="t1", unk_token="t3", padding_side="left"
    )


def bench_trl(s: compare_shapes.Shape, models_dir: str, prompt_ids: np.ndarray) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    steps = s.repeats + 1  # the first step is the warm-up
    text = [" ".join(f"t{i}" for i in row) for row in prompt_ids]
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out_dir:
        args = DistillationConfig(
            output_dir=out_dir,
            per_device_train_batch_size=s.batch,
            gradient_accumulation_steps=1,
            max_steps=steps,
            max_completion_length=s.new_tokens,
            learning_rate=1e-5,
            beta=1.0,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            gradient_checkpointing=False,
            generation_kwargs={"min_new_tokens": s.new_tokens},
            shuffle_dataset=False,
            report_to="none",
            save_strategy="no",
            logging_steps=10**6,
            use_cpu=True,
        )
        trainer = DistillationTrainer(
            model=load(models_dir, "student").train(),
            teacher_model=load(models_dir, "teacher"),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": text * steps}),
            processing_class=word_tokenizer(s.vocab),
            callbacks=[timer],
        )
        trainer.train()
    if len(timer.times) != steps:
        raise RuntimeError(f"TRL ran {len(timer.times)} steps, expected {steps}")
    return {"step_s": timing.summary(timer.times[1:]), "warmup_step_s": timer.times[0]}


def run(shape: str, models_dir: str, repeats: int = 0) -> dict:
    s = compare_shapes.shape(shape, repeats)
    prompt_ids = np.load(os.path.join(models_dir, "prompts.npy"))
    return {
        "torch": torch.__version__,
        "matmul_peak": matmul_peak(),
        "hf_generate": bench_generate(s, load(models_dir, "student"), prompt_ids),
        "trl_step": bench_trl(s, models_dir, prompt_ids),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", required=True, choices=sorted(compare_shapes.SHAPES))
    ap.add_argument("--models", required=True, help="directory written by compare_jax.build")
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=0, help="0: the shape's own")
    args = ap.parse_args()
    with open(args.out, "w") as f:
        json.dump(run(args.shape, args.models, args.repeats), f, indent=2)


if __name__ == "__main__":
    main()
