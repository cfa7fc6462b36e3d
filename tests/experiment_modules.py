"""Every experiment module runs end to end in smoke mode and documents its commands
(shared by test_experiment_modules_a.py / _b.py, one half of the modules each, so the
two pytest workers share the work).

The modules of one file run through the sweep in one process and share SFT stages
where their configs agree (one smoke teacher and student init for most), so the
cost is the distillation runs themselves.
"""

import json
import pathlib

import pytest

from dopd_jax.pipeline import config as config_lib
from dopd_jax.pipeline import config_checks, sweep
from dopd_jax.trainer.metric_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
# privilege_illusion and mopd_domains run in test_experiment / test_method_pipeline;
# qwen3 and jsonl need checkpoints or files (test_qwen3_experiment, test_user_data).
COVERED_ELSEWHERE = {
    "privilege_illusion.py",
    "mopd_domains.py",
    "qwen3_8b_to_1p7b.py",
    "jsonl_task.py",
}
ALL_MODULES = sorted(
    p.name for p in (ROOT / "experiments").glob("*.py") if p.name not in COVERED_ELSEWHERE
)


HALVES = (ALL_MODULES[0::2], ALL_MODULES[1::2])


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("modules"), {}


def check_module_smoke(name, shared):
    root, finished = shared
    path = str(ROOT / "experiments" / name)
    text = (ROOT / "experiments" / name).read_text()
    assert f"--config experiments/{name}" in text  # the module documents its command
    axes = sweep.module_axes(path)
    for v in axes["variants"]:  # every variant's full-size config is valid
        config_checks.validate(config_lib.load_experiment(path, v or None))
    first = axes["variants"][0]
    cell = sweep.Cell(",".join(x for x in (first, "smoke") if x), 0, 0)
    out = root / name.removesuffix(".py")
    report = sweep.run_sweep(path, str(out), [cell], log=lambda *_: None, finished=finished)
    results = json.loads((pathlib.Path(cell.workdir(str(out))) / "results.json").read_text())
    cfg = config_lib.load_experiment(path, cell.variant)
    assert sorted(results["methods"]) == sorted(cfg.distill.methods)
    for run, r in results["methods"].items():
        accs = [v for k, v in r.items() if k.startswith("acc_")]
        assert accs and all(0.0 <= a <= 1.0 for a in accs), run
        assert (r.get("label") or run) in report
    CHECKS.get(name, lambda *_: None)(cell.workdir(str(out)), results["methods"])


def _guardrails(workdir, runs):
    """Skill-gap routing and the wrong-hint contrast log their statistics; the
    early stop (made to fire in smoke mode) ends its run and says why."""
    assert "G_bar" in read_metrics(workdir, "distill/dopd_skill")[0]
    assert {"C_bar", "cut_frac"} <= set(read_metrics(workdir, "distill/dopd_wrong_hint")[0])
    stopped = runs["dopd_early_stop"]["stopped"]
    assert stopped["step"] == 2 and "HS" in stopped["reason"], stopped


def _pruning(workdir, runs):
    assert 0.1 < read_metrics(workdir, "distill/opd_prune_high_gap")[-1]["pruned_frac"] < 0.3


def _ood(workdir, runs):
    assert "acc_ood" in runs["opd"] and "acc_hard" in runs["opd"]


def _continual(workdir, runs):
    # each stage is scored on every domain: forgetting is readable from the table
    assert {"acc_test_arith", "acc_test_sort"} <= set(runs["opd_sort"])


CHECKS = {
    "robustness_map.py": _guardrails,
    "token_pruning.py": _pruning,
    "out_of_distribution.py": _ood,
    "continual.py": _continual,
}
