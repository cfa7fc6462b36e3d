"""dopd_jax: on-policy distillation of language models in JAX / Flax NNX.

DOPD (dual on-policy distillation), vanilla on-policy distillation, OPSD,
GKD, GRPO and MOPD (with Param-Merge), as pure jit-compiled step functions
over plain pytrees.

Shape-suffix legend (used in names such as ``logits_BTV``):
  B  batch rows (prompts x samples)      T  response positions
  P  prompt / prefix positions            L  full sequence positions (P + T)
  V  vocabulary                           D  model width
  H  query heads                          G  key/value heads (GQA groups)
  E  head dimension                       F  MLP hidden width
  S  KV-cache length                      C  chunk of positions
  K  top-K entries
"""

__version__ = "0.1.0"
