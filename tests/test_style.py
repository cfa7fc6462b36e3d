"""One style, checked: ruff lint and format, and the size targets of style.md."""

import ast
import pathlib
import shutil
import statistics
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("dopd_jax", "experiments", "benchmarks", "notebooks", "tests", "setup.py")


def _ruff(*args):
    exe = shutil.which("ruff") or pytest.skip("ruff is not installed (pip install -e .[test])")
    return subprocess.run([exe, *args, *SOURCES], cwd=ROOT, capture_output=True, text=True)


def test_ruff_lint_passes():
    proc = _ruff("check", "--output-format", "concise")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_ruff_format_is_applied():
    proc = _ruff("format", "--check")
    assert proc.returncode == 0, "run `ruff format .`:\n" + proc.stdout[-3000:]


def _package_files():
    return sorted((ROOT / "dopd_jax").rglob("*.py"))


def _function_lengths():
    lengths = []
    for path in _package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths.append(node.end_lineno - node.lineno + 1)
    return lengths


def test_functions_and_files_stay_small():
    """style.md targets: function median ~12 lines (p90 < 50), file p90 < 350 lines."""
    lengths = sorted(_function_lengths())
    assert statistics.median(lengths) <= 12, statistics.median(lengths)
    assert lengths[int(0.9 * len(lengths))] < 50
    files = sorted(len(p.read_text().splitlines()) for p in _package_files())
    assert files[int(0.9 * len(files))] < 350, files[-5:]
    assert sys.version_info >= (3, 11)
