"""Hugging Face checkpoints as model sources (``hf:PATH``): checks, tokenizer, load, export.

Everything a run needs from a checkpoint directory is checked by
``check_sources`` before anything is written to the workdir or compiled:
``config.json`` (a supported architecture), every safetensors file named by it
(headers, shapes, dtypes), the tokenizer files, the chat template when the
config asks for one, and that teacher and student share one vocabulary (same
size, special ids and ids of a probe text). Loading then reads one tensor at a
time into the rule shardings (``models.load_hf``).

Mixed precision: the student is trained with float32 master parameters (and so
float32 optimizer moments and reference copy) whatever the checkpoint's dtype;
its ``model.dtype`` is the compute dtype. The frozen teacher keeps the
configured ``param_dtype`` (bfloat16 for real checkpoints). The export writes
the distilled student back in the checkpoint's own dtype.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from dopd_jax.models import HFTokenizer, ModelConfig, Transformer, hf, hf_config, save_hf
from dopd_jax.models.chat import ChatFormat, read_template
from dopd_jax.pipeline.specs import ExperimentSpec, ModelSpec

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)


def _key(m: ModelSpec) -> str:
    return "teacher" if m.name == "teacher" else "student"


def read_config(path: str, key: str = "model") -> ModelConfig:
    """The ModelConfig of checkpoint ``path`` (ValueError naming the file and problem)."""
    where = f"config.{key}.source"
    if not os.path.isdir(path):
        raise ValueError(f"{where}: checkpoint directory {path} does not exist")
    file = os.path.join(path, "config.json")
    if not os.path.exists(file):
        raise ValueError(f"{where}: {file} not found (not a Hugging Face checkpoint)")
    try:
        with open(file) as f:
            raw = json.load(f)
        return hf_config.config_from_hf(raw)
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{where}: {file}: {e}") from e


def _check_tensors(path: str, cfg: ModelConfig, key: str) -> None:
    try:
        tensors = hf.checkpoint_tensors(path)
        _, params = hf.abstract_params(cfg)
        hf.check_tensors(cfg, params, tensors, hf.checkpoint_source(path))
    except ValueError as e:
        raise ValueError(f"config.{key}.source: {e}") from e


def tokenizer_dir(spec: ExperimentSpec) -> str:
    """Where the tokenizer files are: ``tokenizer.path``, else the student's or teacher's
    checkpoint directory."""
    if spec.tokenizer.path:
        return spec.tokenizer.path
    for m in (spec.student, spec.teacher):
        if m.hf_path is not None:
            return m.hf_path
    raise ValueError("no Hugging Face model source: the tokenizer is trained on the task")


def load_tokenizer(spec: ExperimentSpec) -> HFTokenizer:
    """The checkpoint's tokenizer, with its chat format when the config asks for one."""
    t, path = spec.tokenizer, tokenizer_dir(spec)
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise ValueError(f"config.tokenizer.path: no tokenizer files: {path}/tokenizer.json")
    try:
        tok = HFTokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 (tokenizers raises its own exception types)
        raise ValueError(f"config.tokenizer.path: {path}/tokenizer.json: {e}") from e
    if t.chat_template == "none":
        return tok
    template = read_template(path)
    if template is None:
        raise ValueError(
            f"config.tokenizer.chat_template='checkpoint' but {path} has no chat template "
            "(chat_template.jinja or tokenizer_config.json[chat_template]); set "
            "tokenizer.chat_template='none' to use plain [BOS] x p segments"
        )
    chat = ChatFormat(
        template,
        p_position=t.p_position,
        p_separator=t.p_separator,
        variables=t.template_variables,
        special_tokens=tok.special_tokens(),
    )
    return tok.with_chat(chat)


def _check_vocabularies(spec: ExperimentSpec, tok: HFTokenizer, configs: dict) -> None:
    """Every hf model can embed the tokenizer's ids; teacher and student tokenizers agree."""
    for key, cfg in configs.items():
        if cfg.vocab_size < tok.vocab_size:
            raise ValueError(
                f"config.{key}.source: the checkpoint embeds {cfg.vocab_size} ids but the "
                f"tokenizer ({tokenizer_dir(spec)}) has {tok.vocab_size}"
            )
    probes = {}
    for m in spec.hf_models():
        if os.path.exists(os.path.join(m.hf_path, "tokenizer.json")):
            probes[_key(m)] = HFTokenizer.from_file(m.hf_path).probe()
    if len(probes) == 2 and probes["teacher"] != probes["student"]:
        diff = sorted(k for k in probes["teacher"] if probes["teacher"][k] != probes["student"][k])
        raise ValueError(
            f"teacher and student vocabularies differ ({', '.join(diff)}): "
            f"{spec.teacher.hf_path} vs {spec.student.hf_path}; distillation needs one "
            "shared vocabulary (cross-tokenizer distillation is not supported)"
        )
    if spec.teacher.hf_path is None or spec.student.hf_path is None:
        raise ValueError(
            "config.teacher.source / student.source: an hf: model needs an hf: partner "
            "(a scratch or workdir model has its own SentencePiece vocabulary)"
        )


def check_sources(spec: ExperimentSpec) -> None:
    """Checks every ``hf:`` source before anything is written or compiled."""
    configs = {}
    for m in spec.hf_models():
        key = _key(m)
        if not m.hf_path:
            raise ValueError(f"config.{key}.source: 'hf:' needs a checkpoint directory")
        configs[key] = read_config(m.hf_path, key)
        _check_tensors(m.hf_path, configs[key], key)
    if configs:
        _check_vocabularies(spec, load_tokenizer(spec), configs)


@dataclasses.dataclass(frozen=True)
class Loaded:
    graphdef: object
    params: object
    config: ModelConfig


def load_model(m: ModelSpec, tok, mesh) -> Loaded:
    """The checkpoint of ``m`` in the rule shardings, logits limited to the tokenizer's ids.

    The student (``student_init``) gets float32 master parameters; the teacher the
    configured ``param_dtype``; both compute in ``model.dtype``."""
    arch = m.arch_dict()
    param_dtype = arch["param_dtype"] if m.name == "teacher" else "float32"
    model = hf.load_hf(m.hf_path, dtype=arch["dtype"], param_dtype=param_dtype, mesh=mesh)
    valid = tok.vocab_size if tok.vocab_size < model.cfg.vocab_size else None
    cfg = dataclasses.replace(model.cfg, valid_vocab_size=valid)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    _, params = nnx.split(model)
    return Loaded(graphdef, params, cfg)


def export(path: str, params, cfg: ModelConfig, original_dtype: str, tokenizer_from: str) -> None:
    """Writes a Hugging Face checkpoint (config.json, safetensors in the original dtype,
    the tokenizer files) that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.
    Every process takes part (parameters are gathered); process 0 writes."""
    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    params = jax.tree.map(np.asarray, jax.device_get(params))
    if jax.process_index() != 0:
        return
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    out_cfg = dataclasses.replace(cfg, param_dtype=original_dtype, valid_vocab_size=None)
    save_hf(params, out_cfg, tmp)
    for name in TOKENIZER_FILES:
        src = os.path.join(tokenizer_from, name)
        if os.path.exists(src) and not os.path.exists(os.path.join(tmp, name)):
            shutil.copyfile(src, os.path.join(tmp, name))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
