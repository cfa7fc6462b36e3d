"""The two stated configs of ``benchmarks.compare`` and their model FLOP counts.

Both sides (JAX here, PyTorch/transformers/TRL in ``compare_torch``) build the
same Qwen3-architecture models (QK-norm, SwiGLU, tied embeddings, no biases)
from the same random weights, in float32. Teacher and student share a shape
and differ in their weights. FLOPs are model FLOPs: 2 per multiply-add of the
weight matmuls and of attention over the real (causal) context, nothing for
recomputation, norms or softmaxes; a training update counts 3x its forward.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab: int
    batch: int
    prompt: int  # prompt tokens (every row full: no padding)
    new_tokens: int  # sampled tokens per row (EOS never ends a row early)
    priv: int  # extra tokens of privileged context p (DOPD's x+p passes)
    repeats: int  # timed repetitions after a warm-up call

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


SHAPES = {
    "tiny": Shape("tiny", 2, 128, 4, 2, 384, 512, 16, 64, 64, 16, 5),
    "mid": Shape("mid", 8, 512, 8, 4, 1536, 8192, 32, 128, 128, 32, 3),
}


def shape(name: str, repeats: int = 0) -> Shape:
    """``SHAPES[name]``, with ``repeats`` timed repetitions instead when > 0."""
    s = SHAPES[name]
    return dataclasses.replace(s, repeats=repeats) if repeats > 0 else s


def layer_matmul_params(s: Shape) -> int:
    """Weights of one decoder layer's matmuls (q, k, v, o, gate, up, down)."""
    q_o = 2 * s.d_model * s.n_heads * s.head_dim
    k_v = 2 * s.d_model * s.n_kv_heads * s.head_dim
    return q_o + k_v + 3 * s.d_model * s.d_ff


def token_flops(s: Shape, context: float, logits: bool = True) -> float:
    """Forward FLOPs of one token that attends to ``context`` keys."""
    matmuls = 2 * s.n_layers * layer_matmul_params(s)
    attention = 4 * s.n_layers * s.n_heads * s.head_dim * context  # QK^T and PV
    return matmuls + attention + (2 * s.d_model * s.vocab if logits else 0)


def decode_step_flops(s: Shape) -> float:
    """One decode step of the whole batch, at the mean filled context."""
    return s.batch * token_flops(s, s.prompt + s.new_tokens / 2)


def decode_step_bytes(s: Shape, itemsize: int = 4) -> float:
    """Bytes one decode step must read: every weight once, and the filled KV cache."""
    weights = s.n_layers * layer_matmul_params(s) + s.vocab * s.d_model
    cache = 2 * s.n_layers * s.batch * s.n_kv_heads * s.head_dim * (s.prompt + s.new_tokens / 2)
    return itemsize * (weights + cache)


def sequence_forward_flops(s: Shape, length: int, logit_positions: int) -> float:
    """Forward FLOPs of one causal sequence, projecting ``logit_positions`` to V."""
    body = sum(token_flops(s, i + 1, logits=False) for i in range(length))
    return body + logit_positions * 2 * s.d_model * s.vocab


def update_flops(s: Shape) -> float:
    """The student's forward and backward over prompt + response (3x forward)."""
    length = s.prompt + s.new_tokens
    return 3 * s.batch * sequence_forward_flops(s, length, s.new_tokens)
