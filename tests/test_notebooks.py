"""Notebooks run top to bottom (smoke-size stages, no workdir needed)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_routing_playground_runs(tmp_path):
    env = dict(
        os.environ,
        XLA_FLAGS="",
        JAX_PLATFORMS="cpu",
        DOPD_WORKDIR=str(tmp_path / "no_such_workdir"),
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "notebooks" / "routing_playground.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rule in ("dopd (trimmed batch mean)", "dopd (fixed gap 0.5)", "confidence only"):
        assert rule in proc.stdout
    assert "A_bar" in proc.stdout


def test_notebook_pairs_are_in_sync():
    for py in (ROOT / "notebooks").glob("*.py"):
        ipynb = py.with_suffix(".ipynb")
        assert ipynb.exists(), f"{ipynb.name} missing: run jupytext --sync {py.name}"
        assert ipynb.stat().st_size > 0
