"""Real checkpoints end to end: ``experiments/qwen3_8b_to_1p7b.py`` on tiny Hugging Face
checkpoints written by transformers (random weights, a trained byte-level tokenizer with a
Qwen3-style chat template, 16 more embedding rows than tokens), a tiny JSONL task, export,
reload in transformers. Bad inputs are refused by name before anything is written."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import hf_fixtures as hx
import numpy as np
import pytest
from processes import XLA_OPT

from dopd_jax.models import load_hf
from dopd_jax.pipeline import config as config_lib
from dopd_jax.pipeline import config_checks, runner

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULE = "experiments/qwen3_8b_to_1p7b.py"


def _files(root, kind="qwen3"):
    root = pathlib.Path(root)
    hx.write_checkpoint(root / "teacher", d_model=48, layers=2, tied=False, seed=1, kind=kind)
    hx.write_checkpoint(root / "student", d_model=32, layers=1, tied=True, seed=2, kind=kind)
    hx.write_jsonl(root / "train.jsonl", hx.problems(32, seed=0))
    hx.write_jsonl(root / "test.jsonl", hx.problems(8, seed=1))
    return root


def _arg(root, **extra):
    items = dict(
        teacher=root / "teacher",
        student=root / "student",
        train=root / "train.jsonl",
        test=root / "test.jsonl",
        priv_form="solution",
    )
    items.update(extra)
    return ",".join(f"{k}={v}" for k, v in items.items()) + ",smoke"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("qwen3_files"))


@pytest.fixture(scope="module")
def smoke(files, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("qwen3_run")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": XLA_OPT}
    cmd = [sys.executable, "-m", "dopd_jax.run", "--config", f"{MODULE}:{_arg(files)}"]
    proc = subprocess.run(
        cmd + ["--workdir", str(workdir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def test_smoke_distils_with_both_methods_and_reports(smoke):
    workdir, proc = smoke
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["methods"]) == {"dopd", "opd"}
    for name in ("DOPD", "vanilla OPD"):
        assert name in proc.stdout


@pytest.mark.parametrize("method", ["dopd", "opd"])
def test_export_reloads_in_transformers_with_equal_logits(smoke, files, method):
    import torch
    import transformers

    path = smoke[0] / "export" / method
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (path / name).exists(), name
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    assert hf_model.config.vocab_size == 336 and hf_model.dtype == torch.float32
    ours = load_hf(path)
    tokens = np.random.default_rng(0).integers(0, 320, (2, 9))
    with torch.no_grad():
        ref = hf_model(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(ours(tokens))
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4
    # Distillation moved the weights away from the initial student.
    init = load_hf(files / "student")
    moved = np.abs(np.asarray(ours.embed.embedding[...]) - np.asarray(init.embed.embedding[...]))
    assert moved.max() > 0
    # The exported tokenizer is the student's, chat template included.
    tok = transformers.AutoTokenizer.from_pretrained(path)
    assert tok.eos_token == "<|im_end|>" and "<think>" in tok.chat_template


def test_prompts_are_rendered_with_the_chat_template(files):
    import transformers

    from dopd_jax.data import encode
    from dopd_jax.data.example import Example
    from dopd_jax.pipeline import context, specs

    spec = specs.experiment_spec(config_lib.load_experiment(MODULE, _arg(files)))
    tok = context.hf_models.load_tokenizer(spec)
    ex = Example(prompt="What is 2 + 3?", privileged={"solution": "2 + 3 = 5."})
    prompt, priv = encode.prompt_ids(ex, tok, "solution")
    hf_tok = transformers.AutoTokenizer.from_pretrained(files / "student")
    for ids, content in ((prompt, ex.prompt), (priv, "What is 2 + 3?\n\n2 + 3 = 5.")):
        ref = hf_tok.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=True, add_generation_prompt=True, enable_thinking=False,
        )  # fmt: skip
        ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
        assert ids == list(ref)
    assert hf_tok.decode(priv).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def _config(root, **arg):
    """The smoke config in-process, where the tests see 8 simulated devices (rows must
    split over them)."""
    c = config_lib.load_experiment(MODULE, _arg(root, **arg))
    c.distill.batch_prompts, c.distill.rollout_batch = 8, 0
    return c


def test_llama_checkpoints_run_through_the_same_module(tmp_path):
    """Also: a run over its memory budget is refused naming the knobs, and the same
    workdir then runs with other memory knobs (they are not part of a run's identity)."""
    root = _files(tmp_path / "files", kind="llama")
    c = _config(root)
    c.distill.methods = ("opd",)
    c.distill.memory_budget_gb = 1e-6
    with pytest.raises(ValueError, match=r"above the 0.00 GB available; .*num_microbatches"):
        runner.run_experiment(c, str(tmp_path / "run"), log=lambda m: None)
    c.distill.memory_budget_gb, c.distill.num_microbatches = 8.0, 1
    logs = []
    results = runner.run_experiment(c, str(tmp_path / "run"), log=logs.append)
    assert any(m.startswith("estimated per-device memory: rollout") for m in logs), logs
    assert set(results["methods"]) == {"opd"}
    assert (tmp_path / "run" / "export" / "opd" / "model.safetensors").exists()
    cfg = json.loads((tmp_path / "run" / "export" / "opd" / "config.json").read_text())
    assert cfg["model_type"] == "llama"


def _refused(files, tmp_path, match, **arg):
    workdir = tmp_path / "w"
    c = _config(files, **arg)
    with pytest.raises(ValueError, match=match):
        runner.run_experiment(c, str(workdir), log=lambda m: None)
    assert not workdir.exists()  # nothing a rerun could trip on


def _copy(files, tmp_path, name="student"):
    dst = tmp_path / name
    shutil.copytree(files / name, dst)
    return dst


def test_missing_checkpoint_is_refused(files, tmp_path):
    _refused(files, tmp_path, "does not exist", student=tmp_path / "nope")


def test_corrupt_safetensors_is_refused(files, tmp_path):
    student = _copy(files, tmp_path)
    data = (student / "model.safetensors").read_bytes()
    (student / "model.safetensors").write_bytes(data[: len(data) // 2])
    _refused(files, tmp_path, "config.student.source: .*model.safetensors", student=student)


def test_unsupported_architecture_lists_the_supported_ones(files, tmp_path):
    student = _copy(files, tmp_path)
    cfg = json.loads((student / "config.json").read_text())
    (student / "config.json").write_text(json.dumps(dict(cfg, model_type="gpt2")))
    _refused(files, tmp_path, r"model_type='gpt2' is not one of \('qwen3'", student=student)


def test_missing_tokenizer_is_refused(files, tmp_path):
    student = _copy(files, tmp_path)
    os.remove(student / "tokenizer.json")
    _refused(files, tmp_path, "no tokenizer files", student=student)


def test_missing_chat_template_is_refused(files, tmp_path):
    student = _copy(files, tmp_path)
    cfg = json.loads((student / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (student / "tokenizer_config.json").write_text(json.dumps(cfg))
    _refused(files, tmp_path, "has no chat template", student=student)


def test_vocabulary_mismatch_is_refused(files, tmp_path):
    teacher = _copy(files, tmp_path, "teacher")
    hx.write_tokenizer(teacher, vocab_size=300)
    _refused(files, tmp_path, "teacher and student vocabularies differ", teacher=teacher)


def test_overlong_prompts_are_counted_not_truncated(files, tmp_path):
    rows = hx.problems(8, seed=3)
    rows[2]["privileged"]["solution"] = "step " * 200
    hx.write_jsonl(tmp_path / "long.jsonl", rows)
    c = _config(files, test=tmp_path / "long.jsonl")
    spec = config_checks.validate(c)
    from dopd_jax.pipeline import context

    with pytest.raises(ValueError, match=r"1 of 8 .*row 2"):
        context.build_context(spec, str(tmp_path / "w2"), log=lambda m: None)


def test_arguments_are_checked():
    c = config_lib.load_experiment(MODULE, "teacher=/t,student=/s,train=/a,test=/b")
    assert (c.teacher.source, c.student.source) == ("hf:/t", "hf:/s")
    assert c.student.model.param_dtype == "float32" and c.student.model.dtype == "bfloat16"
    assert c.teacher.model.param_dtype == "bfloat16"
    for bad in ("smok", "teacher=", "mesh=fsdp8", "smoke,teacher=/t"):
        with pytest.raises(ValueError, match="unknown argument|also give"):
            config_lib.load_experiment(MODULE, bad)
