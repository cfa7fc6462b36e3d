"""Experiment configuration: the base ConfigDict every experiment module overrides.

Experiment modules (``experiments/*.py``) call ``base_config()`` and override
a few fields. Configs are locked, so a misspelt override
(``--config.distill.stpes=3``) fails instead of being silently added. The
pipeline reads the config once (``specs.experiment_spec``); defaults live
here and nowhere else.
"""

from __future__ import annotations

import json
import os

import ml_collections

from dopd_jax import methods as methods_lib
from dopd_jax.data import generated


def model_config(d_model, n_layers, n_heads, n_kv_heads, d_ff, *, qk_norm=True):
    """A ConfigDict of ``ModelConfig`` fields (vocab_size comes from the tokenizer)."""
    return ml_collections.ConfigDict(
        dict(
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=d_model // n_heads,
            d_ff=d_ff,
            rope_theta=10000.0,
            qk_norm=qk_norm,
            tie_embeddings=True,
            param_dtype="float32",
            dtype="float32",
        )
    )


# Model sizes of this experiment family (d_model, layers, heads, kv heads, d_ff):
# size_pairs and robustness_map pick teacher/student pairs from these.
SIZES = {
    "xs": (48, 2, 4, 2, 128),
    "s": (64, 2, 4, 2, 192),
    "m": (96, 3, 4, 2, 256),
    "l": (128, 4, 4, 2, 384),
}


def sized(name: str) -> ml_collections.ConfigDict:
    """The model config of a named size (``SIZES``); ValueError lists the names."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; valid: {sorted(SIZES)}")
    return model_config(*SIZES[name])


def _optim(lr: float, warmup_steps: int) -> dict:
    # AdamW; weight decay, the cosine schedule's end and clipping are explicit.
    return dict(
        lr=lr, warmup_steps=warmup_steps, weight_decay=0.0, end_lr_fraction=0.1, clip_norm=1.0
    )


def _sft_stage(model, steps: int, **kw) -> dict:
    return dict(
        source="scratch",
        model=model,
        steps=steps,
        batch_size=64,
        p_dropout=0.5,
        max_len=64,
        checkpoint_every=200,
        **kw,
    )


def method_args() -> dict:
    """Every registered method's config defaults (``config.method_args.<method>``)."""
    return {
        name: methods_lib.config_defaults(m.config_cls) for name, m in methods_lib.METHODS.items()
    }


def _task_defaults() -> dict:
    """config.task: the generated arithmetic task with executed hints as p."""
    # Task source (data.sources): generated | jsonl | tfds | package.module:NAME.
    return dict(
        source="generated",
        priv_form="exec_hints",
        sft_forms=generated.SFT_FORMS,
        max_prompt_len=16,
        max_priv_len=32,
        max_overlength_fraction=0.0,
        verifier="",
        domain="arith",
        difficulty="",  # "n_ops=3" (every domain) or "arith:n_ops=3;sort:n_items=8"
        ood_difficulty="",  # non-empty: also evaluate on "ood", drawn at this difficulty
        misleading_fraction=0.2,
        n_test=1000,
        n_hard=1000,
        corpus_size=3000,
        train_path="",
        test_path="",
        test2_path="",
        data_dir="",
        name="",
    )


def _distill_defaults() -> dict:
    """config.distill: the main setting's distillation runs and their shared settings."""
    return dict(
        methods=("opd", "privt", "opsd", "dopd", "dopd_frozen"),
        steps=600,
        batch_prompts=16,
        n_samples=4,
        **_optim(3e-3, 10),
        max_new_tokens=32,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        chunk_size=0,
        diag_top_k=16,
        log_every=10,
        eval_every=100,
        eval_n=200,
        checkpoint_every=100,
        log_passes=("teacher", "priv_teacher"),
        # num_microbatches > 1 or remat: the fused micro-batched score + update step
        # (steps.microbatch); rollout_batch: prompts per sampler call (0 = all).
        num_microbatches=1,
        remat=False,
        rollout_batch=0,
        # Per-device memory limit (GB) checked against the compiled steps where the
        # device reports none (CPU); 0 = no check there.
        memory_budget_gb=0.0,
        # Unlogged steps skip the diagnostic passes (steps.DistillFns.phase_fns), for
        # two more compiles; off for runs too short to repay them (smoke configs).
        lean_steps=True,
        # Multi-domain tasks (task.domain="arith,sort"): train a run on some domains only,
        # or start it from an earlier run's student ("run:NAME"; "" = the student init).
        domains=(),
        init="",
        # MOPD: one teacher per domain, role teacher/<domain>: "teacher" (config.teacher)
        # or "run:NAME" (an earlier run's student, e.g. a GRPO run on that domain).
        teachers={},
        # Guardrail (methods.md section 10): checkpoint and end a run when a collapse
        # signal holds for `patience` logs; each condition is off at 0.
        early_stop=dict(hs_frac=0.0, a_bar_rise=0, min_entropy=0.0, length_drift=0.0, patience=3),
        # Named variants usable in ``methods``: a method plus overrides of its config
        # (``method_args``) or of distill fields.
        variants=dict(
            dopd_hs_teacher=dict(method="dopd", hs_target="teacher"),
            dopd_frozen=dict(method="dopd", priv_student="frozen"),
            # the privilege-illusion figure's fourth variant: the student trained given p
            privt_privs=dict(method="privt", student_prefix="x+p", label="Priv.T->Priv.S"),
        ),
    )


def base_config() -> ml_collections.ConfigDict:
    """Defaults of the privilege-illusion experiment family (CPU scale)."""
    c = ml_collections.ConfigDict()
    # Seeds (dopd_jax.sweep varies seed and teacher_seed): seed draws the student's
    # initialisation, its warm-up data order, the distillation prompts and sampling;
    # teacher_seed the teacher's initialisation and SFT data order; task_seed the generated
    # problems, test sets and tokenizer corpus (fixed, so seeds share one test set).
    c.seed = 0
    c.teacher_seed = 0
    c.task_seed = 0
    # Device mesh of every step (sharding.rules: batch over data x fsdp, weights over
    # fsdp x tensor); -1 = all remaining devices. One CPU device gives a 1x1x1 mesh.
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    # Multi-process runs (one process per host, or several on one machine): with
    # num_processes > 1, dopd_jax.run calls jax.distributed.initialize with these.
    c.distributed = dict(coordinator_address="", num_processes=1, process_id=0)
    c.checkpoint_keep = 2  # training-state checkpoints kept per stage (ckpt/<stage>)
    c.task = _task_defaults()
    # SentencePiece trained on the task's texts; hard_vocab_limit=False: vocab_size is a cap.
    # With an hf:PATH model the checkpoint's tokenizer.json is used instead (path: its
    # directory, default the student's); chat_template "checkpoint" renders x and x + p
    # with the checkpoint's template, p placed per p_position (user_end | user_start |
    # system), with template_variables in scope (Qwen3's non-thinking mode below).
    c.tokenizer = dict(
        vocab_size=64,
        hard_vocab_limit=True,
        path="",
        chat_template="none",
        p_position="user_end",
        p_separator="\n\n",
        template_variables=dict(enable_thinking=False),
    )
    # Model sources: "scratch" (build + SFT below), "workdir:PATH" (a previous run's) or
    # "hf:PATH" (a Hugging Face checkpoint; of model, only param_dtype and dtype apply).
    c.teacher = _sft_stage(sized("m"), 1200, **_optim(3e-3, 50))
    # 800 warm-up steps leave the student at ~10% test accuracy (~34% given p):
    # weak enough to need the teacher, strong enough that p is usable.
    c.student = _sft_stage(sized("s"), 800, **_optim(3e-3, 30))
    c.method_args = method_args()
    c.method_args.dopd.top_k = 16
    # The main setting (experiments/README.md, "the search"): OPD's per-token advantage
    # (pg) moved no student in 600 steps; its full-vocabulary reverse KL (analytic)
    # closes ~40% of the init-to-teacher gap at the same budget.
    c.method_args.opd.form = "analytic"
    c.method_args.privt.form = "analytic"
    c.distill = _distill_defaults()
    c.eval = dict(batch_size=256, avg_k=0, temperature=1.0)
    c.lock()
    return c


def shrink_to_smoke(c: ml_collections.ConfigDict) -> None:
    """Shrinks a config of this family in place to run in about a minute on one core."""
    c.teacher.model = model_config(32, 1, 2, 1, 64)
    c.student.model = model_config(32, 1, 2, 1, 64)
    c.teacher.steps, c.student.steps, c.distill.steps = 20, 10, 4
    c.distill.log_every, c.distill.eval_every, c.distill.eval_n = 2, 4, 16
    c.distill.lean_steps = False  # 4 steps do not repay the lean phases' compiles
    c.distill.batch_prompts, c.distill.n_samples, c.distill.max_new_tokens = 8, 2, 24
    c.task.n_test, c.task.n_hard = 32, 32
    c.task.corpus_size = 500
    c.eval.batch_size = 32


def parse_arg(arg: str | None, **choices) -> tuple[dict, bool]:
    """An experiment module's ``get_config`` argument: ``key=value,...`` plus ``smoke``.

    Args:
      arg: e.g. ``"mislead=0.25,student=small,smoke"`` (None or "" = defaults).
      **choices: each accepted key with its valid values (strings).

    Returns:
      ``({key: value}, smoke)``.

    Raises:
      ValueError: naming the unknown key or value and the valid ones.
    """
    out, smoke = {}, False
    for token in (arg or "").split(","):
        if not token:
            continue
        if token == "smoke":
            smoke = True
            continue
        key, sep, value = token.partition("=")
        valid = choices.get(key)
        if not sep or valid is None:
            raise ValueError(
                f"unknown argument {token!r}; valid: smoke, "
                + ", ".join(f"{k}={'|'.join(map(str, v))}" for k, v in choices.items())
            )
        if value not in tuple(map(str, valid)):
            raise ValueError(f"argument {key}={value!r}: valid values {list(map(str, valid))}")
        out[key] = value
    return out, smoke


MOPD_DOMAINS = ("arith", "sort", "linear")


def mopd_setting(c: ml_collections.ConfigDict, smoke: bool) -> tuple[str, ...]:
    """The MOPD experiments' shared setting, in place; returns its domains.

    No privileged input; the student (size m, 1,500 warm-up steps on the domain
    mix) is the init every run starts from; the config's own teacher is only a
    reference row. Distillation and RL run at lr 3e-4: at the main setting's
    3e-3, GRPO on sort drove the sampled reward from 0.78 to 0 in 10 steps
    (experiments/README.md, "MOPD").
    """
    domains = MOPD_DOMAINS[:2] if smoke else MOPD_DOMAINS
    c.task.domain = ",".join(domains)
    c.task.priv_form = "none"
    c.task.max_prompt_len = 24
    c.task.max_priv_len = 24
    if not smoke:
        c.student.model = sized("m")
        c.student.steps = 1500
        c.distill.lr = 3e-4
    c.teacher.model = c.student.model  # reference row only: MOPD reads the domain teachers
    c.teacher.steps = 10 if smoke else 100
    c.distill.log_passes = ()
    c.distill.eval_every = 0
    return domains


# A domain teacher trained by SFT on its domain's gold solutions, at the SFT stages'
# batch and rate: one response per prompt (the gold one), 64 prompts, lr 3e-3.
# From the MOPD init, 600 such steps took arith from 22.6% to 83.2% (experiments/README.md).
SFT_TEACHER_STEP = dict(batch_prompts=64, n_samples=1, lr=3e-3)
# Each domain teacher's steps by origin (GRPO: the MOPD modules' 200; SFT: 600).
DOMAIN_TEACHER_STEPS = {"rl": 200, "sft": 600}


def domain_teacher_runs(
    origin: str,
    domains,
    steps: int | None = None,
    *,
    prefix: str = "",
    init: str = "",
    smoke: bool = False,
) -> dict:
    """One MOPD domain-teacher run per domain, named ``<origin><prefix>_<domain>``.

    Args:
      origin: ``"rl"`` (GRPO on that domain's verifier, the MOPD paper's teachers)
        or ``"sft"`` (SFT on that domain's gold solutions: GKD with ``lmbda=0``,
        the sampled forward KL of the gold token, i.e. cross-entropy, at
        ``SFT_TEACHER_STEP``'s batch and rate unless ``smoke``).
      domains: the task's domains.
      steps: each teacher's steps (default: ``DOMAIN_TEACHER_STEPS[origin]``, 2 if
        ``smoke``).
      prefix: the round, inserted into the names and labels (``"2"``: a second
        round, ``sft2_arith`` labelled "SFT teacher arith, round 2").
      init: where the teachers start (``""`` = the student init).
      smoke: keep the config's (smoke-sized) batch.

    Returns:
      ``{name: variant}`` for ``add_variants``.
    """
    if origin not in ("rl", "sft"):
        raise ValueError(f"domain teacher origin must be 'rl' or 'sft', got {origin!r}")
    if steps is None:
        steps = 2 if smoke else DOMAIN_TEACHER_STEPS[origin]
    if origin == "rl":
        base = dict(method="grpo")
    else:
        base = dict(method="gkd", lmbda=0.0, kind="fkl", granularity="sampled")
        base.update({} if smoke else SFT_TEACHER_STEP)
    suffix = f", round {prefix}" if prefix else ""
    return {
        f"{origin}{prefix}_{d}": dict(
            base,
            domains=(d,),
            steps=steps,
            init=init,
            label=f"{origin.upper()} teacher {d}{suffix}",
        )
        for d in domains
    }


def add_variants(c: ml_collections.ConfigDict, **variants) -> None:
    """Adds named run variants (``distill.variants``) to a locked config."""
    with c.distill.variants.unlocked():
        for name, v in variants.items():
            c.distill.variants[name] = v


def to_json_dict(c: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON types (tuples become lists)."""
    return json.loads(json.dumps(c.to_dict()))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The full config a workdir was run with (``workdir/config.json``)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: {workdir} is not an experiment workdir")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_experiment(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of the experiment module at ``path`` (as ``--config path:arg``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    if spec is None or not os.path.exists(path):
        raise ValueError(f"experiment module {path} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
