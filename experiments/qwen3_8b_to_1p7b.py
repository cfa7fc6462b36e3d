"""Paper scale: DOPD vs vanilla OPD, Qwen3-8B teacher -> Qwen3-1.7B student (non-thinking).

Hypothesis (DOPD, arXiv 2606.30626, methods.md section 4): at the paper's
scale DOPD's advantage-gated routing beats vanilla OPD (paper: average of 8
benchmarks 51.4 vs 43.9) with AdamW, cosine schedule, lr 5e-6, 128 prompts x
4 rollouts, at most 200 steps, K = 128.

Run, on your checkpoints and JSONL prompts (rows: ``prompt``, ``privileged``,
``answer`` checked by the ``boxed`` verifier; see ``experiments/jsonl_task.py``):

  python -m dopd_jax.run --workdir W --config \\
    experiments/qwen3_8b_to_1p7b.py:teacher=T,student=S,train=TRAIN.jsonl,test=TEST.jsonl

The argument is comma-separated ``key=value`` (``teacher``, ``student``,
``train``, ``test``, and optionally ``priv_form``: the privileged form used, by
default ``privileged``, the form of a string ``privileged`` field) plus the
bare flag ``smoke``. Both models are loaded from their directories
(``config.json`` + safetensors, ``models.load_hf``) straight into the mesh's
shardings; the student's ``tokenizer.json`` and chat template render x and
x + p (p appended to the user message, ``enable_thinking=False``). Each
method's distilled student is written to ``W/export/<method>/`` as a Hugging
Face checkpoint in the student's original dtype, with its tokenizer files.
``smoke`` keeps the given checkpoints and files but shrinks batch, lengths,
steps and evaluation (about a minute on CPU with tiny checkpoints; tests run
it so).

Precision: the teacher is kept in bfloat16; the student trains float32 master
weights (and float32 AdamW moments) and computes in bfloat16. bfloat16 weights
would not move: an update of ~5e-6 is far below bfloat16's spacing near
typical weights (``tests/test_mixed_precision.py``).

Memory plan: an ``fsdp=8`` mesh (batch rows and weights over 8 devices; more
devices add ``data`` parallelism), the fused step of ``steps.microbatch`` in
64 micro-batches of 8 rollouts with per-block remat of the student, and the
sampler in chunks of 32 prompts (``rollout_batch``).
``benchmarks/paper_scale_memory.py`` prints the per-device memory of this and
other plans; ``tests/test_paper_scale.py`` checks that it fits 80 GB per
device. At start the runner prints the compiled steps' estimate and refuses
to start above the device's memory. Without arguments ``get_config()`` is
the paper's specification (shapes, hyperparameters, plan), which the memory
benchmark lowers abstractly; running it needs the checkpoints.

A Llama checkpoint pair works through the same module (``config.json``
``model_type: llama``); ``tests/test_qwen3_experiment.py`` runs both.
"""

from dopd_jax.pipeline import config as config_lib

QWEN3_VOCAB = 151936
KEYS = ("teacher", "student", "train", "test", "priv_form")


def qwen3_model(d_model, n_layers, n_heads, n_kv_heads, d_ff, head_dim, *, tied, param_dtype):
    """ModelConfig fields of a Qwen3 decoder (QK-norm, rope_theta 1e6, eps 1e-6), bf16 compute."""
    m = config_lib.model_config(d_model, n_layers, n_heads, n_kv_heads, d_ff, qk_norm=True)
    with m.unlocked():
        m.head_dim, m.rope_theta, m.norm_eps, m.tie_embeddings = head_dim, 1e6, 1e-6, tied
        m.param_dtype, m.dtype = param_dtype, "bfloat16"
    return m


def parse(arg) -> dict:
    """``key=value`` items and the flag ``smoke``, comma-separated (ValueError otherwise)."""
    opts = dict.fromkeys(KEYS, "")
    opts.update(smoke=False, priv_form="privileged")
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        if item == "smoke":
            opts["smoke"] = True
        elif eq and key in KEYS and value:
            opts[key] = value
        else:
            raise ValueError(
                f"unknown argument {item!r}; valid: smoke, "
                + ", ".join(f"{k}=..." for k in KEYS)
                + " (comma-separated)"
            )
    if opts["smoke"]:
        missing = [k for k in ("teacher", "student", "train", "test") if not opts[k]]
        if missing:
            raise ValueError(f"smoke runs the given checkpoints and files: also give {missing}")
    return opts


def _paper(c):
    """Qwen3-8B -> Qwen3-1.7B shapes and the methods.md section 4 hyperparameters."""
    c.teacher.model = qwen3_model(4096, 36, 32, 8, 12288, 128, tied=False, param_dtype="bfloat16")
    c.student.model = qwen3_model(2048, 28, 16, 8, 6144, 128, tied=True, param_dtype="float32")
    c.task.max_prompt_len, c.task.max_priv_len = 1024, 2048
    d = c.distill
    d.methods, d.steps, d.batch_prompts, d.n_samples = ("dopd", "opd"), 200, 128, 4
    d.lr, d.warmup_steps, d.max_new_tokens = 5e-6, 0, 2048
    c.method_args.dopd.top_k, d.chunk_size, d.diag_top_k = 128, 256, 128
    d.log_every, d.eval_every, d.eval_n, d.checkpoint_every = 1, 50, 256, 25
    c.mesh = dict(data=-1, fsdp=8, tensor=1)
    d.num_microbatches, d.remat, d.rollout_batch = 64, True, 32
    c.eval.batch_size = 64


def _smoke(c):
    """The given checkpoints on CPU: a few tiny steps, float32 compute."""
    for role in ("teacher", "student"):
        c[role].model.param_dtype = c[role].model.dtype = "float32"
    c.task.max_prompt_len, c.task.max_priv_len = 64, 96
    d = c.distill
    d.methods, d.steps, d.batch_prompts, d.n_samples = ("dopd", "opd"), 2, 4, 2
    d.max_new_tokens, d.log_every, d.eval_every, d.eval_n = 12, 1, 2, 8
    c.method_args.dopd.top_k, d.chunk_size, d.diag_top_k = 8, 0, 8
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    d.num_microbatches, d.remat, d.rollout_batch = 2, True, 2
    c.eval.batch_size = 8


def get_config(arg=None):
    """The paper-scale config; ``arg`` as in the module docstring."""
    opts = parse(arg)
    c = config_lib.base_config()
    c.teacher.source = f"hf:{opts['teacher']}"
    c.student.source = f"hf:{opts['student']}"
    c.teacher.steps = c.student.steps = 0  # checkpoints are used as they are
    t = c.task
    t.source, t.train_path, t.test_path, t.verifier = "jsonl", opts["train"], opts["test"], "boxed"
    t.priv_form, t.sft_forms = opts["priv_form"], (opts["priv_form"],)
    c.tokenizer.chat_template = "checkpoint"
    c.eval.avg_k = 0
    _paper(c)
    if opts["smoke"]:
        _smoke(c)
    return c
