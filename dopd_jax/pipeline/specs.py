"""The ConfigDict, read once: typed frozen specs for every layer below the pipeline.

``experiment_spec(cfg)`` is the only place that reads an experiment's
``ml_collections.ConfigDict``; stages, the trainer, sharding, checkpoints and
data take these dataclasses. Every error names the config key.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import ml_collections

from dopd_jax import methods as methods_lib
from dopd_jax.data.sources import TaskSpec
from dopd_jax.methods import Method


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """AdamW with warm-up, cosine decay and clipping (``trainer.make_optimizer``)."""

    lr: float
    warmup_steps: int
    total_steps: int
    weight_decay: float
    end_lr_fraction: float
    clip_norm: float


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of the experiment and how it is obtained.

    ``source`` is ``scratch`` (built from ``arch`` and SFT-trained),
    ``workdir:PATH`` (restored from a previous experiment's finished stage
    ``name`` under PATH) or ``hf:PATH`` (a Hugging Face checkpoint directory,
    used as it is: its ``config.json`` gives the shape, and of ``arch`` only
    ``param_dtype`` and ``dtype``, the compute dtype, apply).
    """

    name: str  # stage / directory name: "teacher" or "student_init"
    source: str
    arch: tuple[tuple[str, Any], ...]  # ModelConfig fields except vocab_size
    steps: int
    batch_size: int
    optim: OptimSpec
    p_dropout: float
    max_len: int
    checkpoint_every: int
    seed: int
    log_every: int

    def arch_dict(self) -> dict:
        return dict(self.arch)

    @property
    def hf_path(self) -> str | None:
        """The checkpoint directory of an ``hf:PATH`` source, else None."""
        return self.source[len("hf:") :] if self.source.startswith("hf:") else None


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """The tokenizer: SentencePiece trained on the task, or a checkpoint's ``tokenizer.json``.

    ``path`` (default: the student's ``hf:`` directory, else the teacher's) is
    used when a model comes from a Hugging Face checkpoint. ``chat_template``:
    ``none`` (segments ``[BOS] x p``) or ``checkpoint`` (the directory's chat
    template renders x and x + p; ``p_position``, ``p_separator`` and
    ``template_variables`` as in ``models.chat.ChatFormat``).
    """

    vocab_size: int
    hard_vocab_limit: bool
    path: str
    chat_template: str
    p_position: str
    p_separator: str
    template_variables: tuple[tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One distillation run: a method (or a variant of one) and its settings."""

    name: str
    label: str  # results-table row label
    method: Method
    config: Any  # the method's frozen config dataclass
    steps: int
    batch_prompts: int
    n_samples: int
    optim: OptimSpec
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    chunk_size: int | None
    diag_top_k: int
    log_every: int
    eval_every: int
    eval_n: int
    checkpoint_every: int
    log_passes: tuple[str, ...]
    num_microbatches: int = 1  # > 1 or remat: the fused micro-batched score + update
    remat: bool = False
    rollout_batch: int = 0  # prompts per sampler call (0: the whole batch at once)
    memory_budget_gb: float = 0.0  # per-device limit where the device reports none
    lean_steps: bool = True  # unlogged steps run the lean phases (DistillFns.phase_fns)
    domains: tuple[str, ...] = ()  # train on these domains of the task only (() = all)
    init: str = ""  # "" = the student init; "run:NAME" = the final student of run NAME
    early_stop: tuple[tuple[str, Any], ...] = ()  # trainer.early_stop.EarlyStop fields
    # This run's domain teachers ((domain, "teacher" | "run:NAME"), ...) where a variant
    # sets ``teachers`` (multi-round MOPD); () = the experiment's ``distill.teachers``.
    teachers: tuple[tuple[str, str], ...] = ()

    def identity(self) -> dict:
        """``to_json`` without the knobs that change memory, not results: a run may be
        resumed, or its result reused, after them changing (``MEMORY_KNOBS``)."""
        return without_memory_knobs(self.to_json())

    def to_json(self) -> dict:
        """JSON description (resume checks, results): the method by name and its config."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["method"] = self.method.name
        d["config"] = dataclasses.asdict(self.config)
        d["optim"] = dataclasses.asdict(self.optim)
        return json.loads(json.dumps(d))


# Knobs that change memory or speed, not results.
MEMORY_KNOBS = ("num_microbatches", "remat", "memory_budget_gb", "chunk_size", "lean_steps")


# Fields added after workdirs existed: left out at their defaults, so old results match.
_NEW_DEFAULTS = {
    "domains": [],
    "init": "",
    "teachers": [],
    "early_stop": [
        ["a_bar_rise", 0],
        ["hs_frac", 0.0],
        ["length_drift", 0.0],
        ["min_entropy", 0.0],
        ["patience", 3],
    ],
}


def without_memory_knobs(run_json: dict) -> dict:
    return {
        k: v
        for k, v in run_json.items()
        if k not in MEMORY_KNOBS and not (k in _NEW_DEFAULTS and v == _NEW_DEFAULTS[k])
    }


def reuse_identity(run_json: dict) -> dict:
    """What a finished result must match to be reused: ``without_memory_knobs``
    less the table label (relabelling a run does not retrain it)."""
    return {k: v for k, v in without_memory_knobs(run_json).items() if k != "label"}


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    batch_size: int
    max_new_tokens: int
    avg_k: int  # sampled responses per prompt for avg@k (0: greedy only)
    temperature: float


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
    seed: int  # student initialisation and warm-up data order, prompt order, sampling
    mesh: tuple[tuple[str, int], ...]
    checkpoint_keep: int
    tokenizer: TokenizerSpec
    task: TaskSpec
    teacher: ModelSpec
    student: ModelSpec
    runs: tuple[RunSpec, ...]
    eval: EvalSpec
    # domain -> source of its teacher ("teacher" or "run:NAME"): the roles teacher/<domain>
    domain_teachers: tuple[tuple[str, str], ...] = ()
    task_seed: int = 0  # generated problems, test sets, tokenizer corpus

    def run_refs(self) -> set[str]:
        """Runs whose final student a later run reads (as a domain teacher or an init)."""
        sources = [s for _, s in self.domain_teachers] + [r.init for r in self.runs]
        sources += [s for r in self.runs for _, s in r.teachers]
        return {s[len("run:") :] for s in sources if s.startswith("run:")}

    def stage_json(self) -> dict:
        """What the SFT stages and the tokenizer depend on (a workdir's identity)."""
        return json.loads(
            json.dumps(
                {
                    "seed": self.seed,
                    "task_seed": self.task_seed,
                    "task": dataclasses.asdict(self.task),
                    "tokenizer_vocab_size": self.tokenizer.vocab_size,
                    "tokenizer_hard_limit": self.tokenizer.hard_vocab_limit,
                    **self._tokenizer_json(),
                    "teacher": dataclasses.asdict(self.teacher),
                    "student": dataclasses.asdict(self.student),
                }
            )
        )

    def _tokenizer_json(self) -> dict:
        """Checkpoint-tokenizer settings (absent for trained SentencePiece tokenizers,
        so workdirs made before they existed keep their identity)."""
        t = self.tokenizer
        if not (t.path or t.chat_template != "none" or self.hf_models()):
            return {}
        return {"tokenizer": dataclasses.asdict(t)}

    def hf_models(self) -> tuple[ModelSpec, ...]:
        """The models that come from Hugging Face checkpoints."""
        return tuple(m for m in (self.teacher, self.student) if m.hf_path is not None)


def tokenizer_spec(c) -> TokenizerSpec:
    t = c.tokenizer
    variables = t.template_variables.to_dict() if t.get("template_variables") else {}
    return TokenizerSpec(
        vocab_size=t.vocab_size,
        hard_vocab_limit=t.hard_vocab_limit,
        path=t.get("path", ""),
        chat_template=t.get("chat_template", "none"),
        p_position=t.get("p_position", "user_end"),
        p_separator=t.get("p_separator", "\n\n"),
        template_variables=tuple(sorted(variables.items())),
    )


def _optim(block, total_steps: int) -> OptimSpec:
    return OptimSpec(
        lr=block.lr,
        warmup_steps=block.warmup_steps,
        total_steps=total_steps,
        weight_decay=block.weight_decay,
        end_lr_fraction=block.end_lr_fraction,
        clip_norm=block.clip_norm,
    )


def _model(c, key: str, name: str, seed: int) -> ModelSpec:
    b = c[key]
    arch = tuple(sorted(b.model.to_dict().items()))
    return ModelSpec(
        name=name,
        source=b.source,
        arch=arch,
        steps=b.steps,
        batch_size=b.batch_size,
        optim=_optim(b, b.steps),
        p_dropout=b.p_dropout,
        max_len=b.max_len,
        checkpoint_every=b.checkpoint_every,
        seed=seed,
        log_every=c.distill.log_every,
    )


def task_spec(c) -> TaskSpec:
    t = c.task.to_dict()
    t["sft_forms"] = tuple(t["sft_forms"])
    return methods_lib.build_config(TaskSpec, t, "config.task")


def _label(method: Method, name: str, overrides: dict) -> str:
    if "label" in overrides:
        return str(overrides.pop("label"))
    if name == method.name or not overrides:
        return method.label
    return " ".join([method.label] + [f"{k}={v}" for k, v in overrides.items()])


def resolve_run(c, name: str) -> tuple[Method, dict, ml_collections.ConfigDict, str]:
    """A ``distill.methods`` entry: a method name, an import path, or a variant.

    Returns:
      ``(method, method_overrides, distill_block, label)``: the method, the
      config overrides for it (``method_args.<name>`` then the variant's), a
      copy of ``config.distill`` with the variant's distill overrides applied,
      and the run's table label (a variant's ``label``, or the method's label
      followed by the overrides).
    """
    d = copy.deepcopy(c.distill)
    overrides = {}
    if name in d.variants:
        overrides = d.variants[name].to_dict()
        base = overrides.pop("method", None)
        if not isinstance(base, str):
            raise ValueError(f"config.distill.variants.{name}: needs method=NAME")
    else:
        base = name
    try:
        method = methods_lib.get_method(base)
    except ValueError as e:
        raise ValueError(f"config.distill.methods: {e}; variants: {sorted(d.variants)}") from e
    label = _label(method, name, overrides)
    args = dict(c.method_args[base].to_dict()) if base in c.method_args else {}
    fields = {f.name for f in dataclasses.fields(method.config_cls)}
    for key, value in overrides.items():
        if key in fields:
            args[key] = value
        elif key in d and key not in ("variants", "methods"):
            d[key] = value
        else:
            raise ValueError(
                f"config.distill.variants.{name}: {key!r} is neither a field of "
                f"{method.config_cls.__name__} ({sorted(fields)}) nor a distill "
                "field"
            )
    return method, args, d, label


def run_spec(c, name: str) -> RunSpec:
    method, args, d, label = resolve_run(c, name)
    config = method.make_config(args, f"config.method_args.{method.name} (run {name!r})")
    return RunSpec(
        name=name,
        label=label,
        method=method,
        config=config,
        steps=d.steps,
        batch_prompts=d.batch_prompts,
        n_samples=d.n_samples,
        optim=_optim(d, d.steps),
        max_new_tokens=d.max_new_tokens,
        temperature=d.temperature,
        top_k=d.top_k,
        top_p=d.top_p,
        chunk_size=d.chunk_size or None,
        diag_top_k=d.diag_top_k,
        log_every=d.log_every,
        eval_every=d.eval_every,
        eval_n=d.eval_n,
        checkpoint_every=d.checkpoint_every,
        log_passes=tuple(d.log_passes),
        num_microbatches=d.get("num_microbatches", 1),
        remat=bool(d.get("remat", False)),
        rollout_batch=d.get("rollout_batch", 0),
        memory_budget_gb=float(d.get("memory_budget_gb", 0.0)),
        lean_steps=bool(d.get("lean_steps", True)),
        domains=tuple(d.get("domains", ())),
        init=d.get("init", ""),
        early_stop=tuple(sorted((d.get("early_stop") or {}).items())),
        teachers=_own_teachers(c, d),
    )


def _own_teachers(c, d) -> tuple[tuple[str, str], ...]:
    """A run's domain-teacher mapping where its variant overrides ``distill.teachers``."""
    own, shared = _teacher_pairs(d), _teacher_pairs(c.distill)
    return own if own != shared else ()


def _teacher_pairs(d) -> tuple[tuple[str, str], ...]:
    teachers = d.get("teachers") or {}
    if hasattr(teachers, "to_dict"):
        teachers = teachers.to_dict()
    return tuple(sorted(teachers.items()))


def experiment_spec(c: ml_collections.ConfigDict) -> ExperimentSpec:
    """Reads the whole config into typed specs (raises ValueError naming the key)."""
    names = tuple(c.distill.methods)
    if len(names) != len(set(names)):
        raise ValueError(f"config.distill.methods: duplicate entries in {names}")
    return ExperimentSpec(
        seed=c.seed,
        task_seed=c.task_seed,
        mesh=tuple(c.mesh.to_dict().items()),
        checkpoint_keep=c.checkpoint_keep,
        tokenizer=tokenizer_spec(c),
        task=task_spec(c),
        teacher=_model(c, "teacher", "teacher", c.teacher_seed + 100),
        student=_model(c, "student", "student_init", c.seed + 200),
        runs=tuple(run_spec(c, n) for n in names),
        eval=EvalSpec(
            batch_size=c.eval.batch_size,
            max_new_tokens=c.distill.max_new_tokens,
            avg_k=c.eval.avg_k,
            temperature=c.eval.temperature,
        ),
        domain_teachers=_teacher_pairs(c.distill),
    )
