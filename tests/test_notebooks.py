"""Notebooks run top to bottom (smoke-size stages, no workdir needed)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from processes import XLA_OPT

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(name: str, tmp_path) -> str:
    env = dict(
        os.environ,
        XLA_FLAGS=XLA_OPT,
        JAX_PLATFORMS="cpu",
        DOPD_WORKDIR=str(tmp_path / "no_such_workdir"),
        DOPD_SWEEP=str(tmp_path / "no_such_sweep"),
        DOPD_FIGURES=str(tmp_path),
        DOPD_REPO=str(ROOT),
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "notebooks" / name)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_routing_workbench_compares_rules_and_trains_with_a_new_one(tmp_path):
    out = _run("routing_playground.py", tmp_path)
    for rule in ("dopd (trimmed batch mean)", "dopd (fixed gap 0.5)", "confidence only"):
        assert rule in out
    assert "A_bar" in out
    assert (tmp_path / "rule_regime_maps.png").read_bytes()[:4] == b"\x89PNG"
    trained = [line for line in out.splitlines() if line.startswith(("DOPD ", "confidence rule"))]
    assert len(trained) == 2 and "HS 0%" in trained[1]  # the new rule never routes to HS


def test_dopd_step_walkthrough_shows_regimes_losses_and_gradients(tmp_path):
    out = _run("dopd_step_walkthrough.py", tmp_path)
    assert "regime shares:" in out and "loss_HT" in out
    grads = next(line for line in out.splitlines() if line.startswith("grad norms"))
    student, priv_student, priv_teacher = eval(grads.split(":", 1)[1])
    assert student > 0 and priv_student == 0 and priv_teacher == 0
    assert (tmp_path / "regime_map.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_results_notebook_redraws_tables_and_figures(tmp_path):
    out = _run("sweep_results.py", tmp_path)
    assert "| OPD -20% high_gap |" in out and "| 2/2 |" in out
    for name in ("nb_smoke_curves.png", "nb_smoke_final.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("py", sorted((ROOT / "notebooks").glob("*.py")), ids=lambda p: p.name)
def test_notebook_pairs_are_in_sync(py):
    """The code cells of the .ipynb are those of the .py (jupytext pairs them)."""
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run jupytext --sync {py.name}"
    cells = [c for c in json.loads(ipynb.read_text())["cells"] if c["cell_type"] == "code"]
    chunks = re.split(r"^# %%", py.read_text(), flags=re.M)[1:]
    py_cells = [c.split("\n", 1)[1].strip() for c in chunks if not c.startswith(" [markdown]")]
    nb_cells = ["".join(c["source"]).strip() for c in cells]
    assert nb_cells == py_cells, f"{ipynb.name} is stale: run jupytext --sync {py.name}"
