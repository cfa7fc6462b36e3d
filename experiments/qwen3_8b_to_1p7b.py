"""Paper scale: DOPD vs vanilla OPD, Qwen3-8B teacher -> Qwen3-1.7B student (non-thinking).

Hypothesis (DOPD, arXiv 2606.30626, methods.md section 4): at the paper's
scale DOPD's advantage-gated routing beats vanilla OPD (paper: average of 8
benchmarks 51.4 vs 43.9) with AdamW, cosine schedule, lr 5e-6, 128 prompts x
4 rollouts, at most 200 steps, K = 128.

What this config fixes: the two models' shapes (those of the Hugging Face
Qwen3-8B / Qwen3-1.7B ``config.json``, bf16), the hyperparameters above,
the lengths (prompt x <= 1024 tokens, privileged prefix x + p <= 2048,
response <= 2048; the student scores 3,072 positions, the privileged teacher
4,096), and the memory plan: an ``fsdp=8`` mesh (batch rows and weights over
8 devices; more devices add ``data`` parallelism) with the fused step of
``dopd_jax.steps.microbatch`` in 64 micro-batches of 8 rollouts (one per device) and
per-block rematerialisation of the student. ``benchmarks/paper_scale_memory.py``
prints the per-device memory of this and other plans; ``tests/test_paper_scale.py``
checks that this plan fits 80 GB per device. Measured (XLA:CPU, 8 simulated
devices, full depth): 31.1 GB per device (3.3 GB arguments, 27.8 GB temp);
32 micro-batches: 43.0 GB; without remat: 85.6 GB; one unsharded device with
one micro-batch: 5.6 TB. The sampler (``rollout.sample``, prefill projecting
only the last prompt position) needs 76.3 GB per device for 128 prompts per
call and 20.2 GB for 32.

Not runnable end to end yet, and said plainly: the experiment runner
(``dopd_jax.run`` / ``dopd_jax.pipeline``) still builds the CPU-scale task, tokenizer
and SFT stages of ``privilege_illusion``; it does not load ``hf.teacher_path``
/ ``hf.student_path`` (``dopd_jax.models.load_hf``), the Hugging Face
tokenizer, the paper's math prompts or benchmarks, nor call the micro-batched
step. Until that is wired, the full config is a checked specification (shapes,
hyperparameters, memory plan), and ``smoke`` runs the CPU-scale pipeline with
tiny Qwen3-shaped models and the same fields.

Run (once wired):
  python -m dopd_jax.run --workdir runs/paper \
    --config experiments/qwen3_8b_to_1p7b.py:teacher=/ckpt/Qwen3-8B,student=/ckpt/Qwen3-1.7B
Smoke:
  python -m dopd_jax.run --config experiments/qwen3_8b_to_1p7b.py:smoke --workdir /tmp/paper_smoke

Fields added to ``config.base_config()`` (under new keys):
  ``hf``: ``teacher_path``, ``student_path`` (checkpoint directories),
    ``vocab_size`` (151,936, shared by both Qwen3 models; the CPU runner takes
    V from its own tokenizer instead).
  ``mesh``: ``data`` / ``fsdp`` / ``tensor`` sizes (``sharding.make_mesh``).
  ``distill.num_microbatches``, ``distill.remat``: arguments of
    ``microbatch.make_microbatched_update``.
"""

import ml_collections

from dopd_jax.pipeline import config as config_lib

QWEN3_VOCAB = 151936


def qwen3_model(d_model, n_layers, n_heads, n_kv_heads, d_ff, head_dim, *, tied, dtype="bfloat16"):
    """ModelConfig fields of a Qwen3 decoder (QK-norm, rope_theta 1e6, eps 1e-6)."""
    m = config_lib.model_config(d_model, n_layers, n_heads, n_kv_heads, d_ff, qk_norm=True)
    with m.unlocked():
        m.head_dim, m.rope_theta, m.norm_eps, m.tie_embeddings = head_dim, 1e6, 1e-6, tied
        m.param_dtype = m.dtype = dtype
    return m


def _parse(arg):
    """``"smoke"``, ``"teacher=PATH,student=PATH"`` or both, comma-separated."""
    opts = {"smoke": False, "teacher": "", "student": ""}
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if item == "smoke":
            opts["smoke"] = True
        elif key in ("teacher", "student") and value:
            opts[key] = value
        else:
            raise ValueError(
                f"unknown argument {item!r}; valid: smoke, teacher=PATH, "
                "student=PATH (comma-separated)"
            )
    return opts


def _paper(c):
    """Qwen3-8B -> Qwen3-1.7B shapes and the methods.md section 4 hyperparameters."""
    c.teacher.model = qwen3_model(4096, 36, 32, 8, 12288, 128, tied=False)
    c.student.model = qwen3_model(2048, 28, 16, 8, 6144, 128, tied=True)
    c.task.max_prompt_len, c.task.max_priv_len = 1024, 2048
    d = c.distill
    d.methods, d.steps, d.batch_prompts, d.n_samples = ("dopd", "opd"), 200, 128, 4
    d.lr, d.warmup_steps, d.max_new_tokens = 5e-6, 0, 2048
    c.method_args.dopd.top_k, d.chunk_size, d.diag_top_k = 128, 256, 128
    d.log_every, d.eval_every, d.checkpoint_every = 1, 50, 25
    c.mesh = dict(data=-1, fsdp=8, tensor=1)
    d.num_microbatches, d.remat = 64, True


def _smoke(c):
    """CPU-scale pipeline with tiny Qwen3-shaped models (untied teacher, tied student)."""
    config_lib.shrink_to_smoke(c)
    c.teacher.model = qwen3_model(32, 2, 2, 1, 64, 16, tied=False, dtype="float32")
    c.student.model = qwen3_model(32, 1, 2, 1, 64, 16, tied=True, dtype="float32")
    c.distill.methods = ("dopd", "opd")
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.distill.num_microbatches = 2


def get_config(arg=None):
    """The paper-scale config; ``arg``: ``smoke`` and/or ``teacher=PATH,student=PATH``."""
    opts = _parse(arg)
    c = config_lib.base_config()
    with c.unlocked():
        c.hf = ml_collections.ConfigDict(
            dict(teacher_path=opts["teacher"], student_path=opts["student"], vocab_size=QWEN3_VOCAB)
        )
        c.distill.num_microbatches, c.distill.remat = 1, True
        (_smoke if opts["smoke"] else _paper)(c)
    c.lock()
    return c
