"""Tiny Hugging Face checkpoints written by transformers, for end-to-end tests.

A byte-level BPE tokenizer with Qwen3's special tokens and a Qwen3-style chat
template (non-thinking mode via ``enable_thinking=False``), and random-weight
Qwen3 / Llama models whose embeddings have more rows than the tokenizer has ids
(as real Qwen3 checkpoints do).
"""

import json
import os

QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == 'assistant' %}\n"
    "        {{- '<|im_start|>assistant\\n' + message.content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def problems(n: int, seed: int = 0) -> list[dict]:
    """JSONL rows: a sum to compute, its reference solution as privileged text."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        solution = f"{a} + {b} = {a + b}."
        rows.append(
            dict(
                prompt=f"What is {a} + {b}?",
                privileged={"solution": solution, "answer": f"The answer is {a + b}."},
                response=f" {solution} So the answer is \\boxed{{{a + b}}}",
                answer=str(a + b),
                domain="math",
            )
        )
    return rows


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def write_tokenizer(directory, *, vocab_size=320, template=QWEN3_TEMPLATE) -> int:
    """Writes tokenizer.json + tokenizer_config.json; returns the number of ids."""
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [r["prompt"] + r["response"] + r["privileged"]["solution"] for r in problems(200)]
    corpus += ["user assistant system Reference solution: The answer is \\boxed{}"] * 5
    tok.train_from_iterator(corpus, trainer)
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    config = dict(
        tokenizer_class="PreTrainedTokenizerFast",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        model_max_length=4096,
    )
    if template is not None:
        config["chat_template"] = template
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return tok.get_vocab_size(with_added_tokens=True)


def write_model(directory, *, rows, d_model=32, layers=2, tied=True, kind="qwen3", seed=0):
    """A random-weight transformers model (float32) saved with ``save_pretrained``."""
    import torch
    import transformers

    classes = {
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
    }
    config_cls, model_cls = (getattr(transformers, n) for n in classes[kind])
    config = config_cls(
        vocab_size=rows,
        hidden_size=d_model,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=d_model // 4,
        intermediate_size=2 * d_model,
        tie_word_embeddings=tied,
        initializer_range=0.1,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return model


def write_checkpoint(directory, **model_kw) -> str:
    """Tokenizer files + a model with 16 more embedding rows than tokens."""
    n_ids = write_tokenizer(directory)
    write_model(directory, rows=n_ids + 16, **model_kw)
    return str(directory)
