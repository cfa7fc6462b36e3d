"""Peak scratch memory of the DOPD loss (forward + backward) at V = 151,936.

Run:  python benchmarks/bench_loss_memory.py [--vocab 151936] [--out mem.json]

Nothing is executed: each configuration is lowered and compiled for abstract
bfloat16 logits and XLA's memory analysis of the compiled executable is read.
Logits are float32 and bfloat16. ``temp`` is the scratch memory beyond the arguments and
outputs (the three ``[B, T, V]``
logits in, the ``[B, T, V]`` student gradient out, which any
implementation must hold). Chunked over positions, ``temp`` should follow the
chunk size and stay flat in the sequence length; unchunked, it grows with T.
XLA:CPU has no native bfloat16 arithmetic and converts whole bf16 inputs to
float32 before the loop, so on this backend the bf16 rows still grow with T
(three converted copies); the float32 rows show the chunking itself.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from dopd_jax.losses import dopd_loss

GIB = 2**30


def _compiled_memory(
    batch: int, seq: int, vocab: int, chunk: int | None, dtype=jnp.bfloat16
) -> dict:
    logits = jax.ShapeDtypeStruct((batch, seq, vocab), dtype)
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    mask = jax.ShapeDtypeStruct((batch, seq), jnp.bool_)

    def loss_and_grad(s, ps, t, y, m):
        fn = lambda s_: dopd_loss(s_, ps, t, y, m, top_k=128, chunk_size=chunk)[0]
        return jax.value_and_grad(fn)(s)

    compiled = jax.jit(loss_and_grad).lower(logits, logits, logits, tokens, mask).compile()
    mem = compiled.memory_analysis()
    return {
        "batch": batch,
        "seq": seq,
        "vocab": vocab,
        "chunk": chunk or 0,
        "temp_gib": mem.temp_size_in_bytes / GIB,
        "args_gib": mem.argument_size_in_bytes / GIB,
        "out_gib": mem.output_size_in_bytes / GIB,
        "one_BTV_f32_gib": batch * seq * vocab * 4 / GIB,
    }


def bench(vocab: int) -> list[dict]:
    rows = []
    for dtype in (jnp.float32, jnp.bfloat16):
        for chunk in (None, 64, 256):
            for seq in (256, 512, 1024):
                row = _compiled_memory(1, seq, vocab, chunk, dtype)
                rows.append(dict(row, dtype=jnp.dtype(dtype).name))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = bench(args.vocab)
    print(
        f"{'dtype':>8} {'chunk':>6} {'T':>6} {'temp GiB':>9} {'args GiB':>9} {'out GiB':>8} "
        f"{'[B,T,V] f32 GiB':>16}"
    )
    for r in rows:
        print(
            f"{r['dtype']:>8} {r['chunk'] or 'none':>6} {r['seq']:>6} {r['temp_gib']:>9.3f} "
            f"{r['args_gib']:>9.3f} {r['out_gib']:>8.3f} {r['one_BTV_f32_gib']:>16.3f}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
