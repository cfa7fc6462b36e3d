"""Repository contracts: README's two commands, CI calling the test one verbatim."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)


def test_readme_opens_with_two_commands():
    blocks = _readme_blocks()
    assert len(blocks) >= 2
    run_cmd, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert "dopd_jax.run --config experiments/privilege_illusion.py " in run_cmd
    assert "pip install" in run_cmd and "pip install" in test_cmd
    assert "pytest" in test_cmd


def test_ci_runs_readme_test_command_verbatim():
    test_cmd = _readme_blocks()[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_every_experiment_has_get_config_with_smoke():
    for path in sorted((ROOT / "experiments").glob("*.py")):
        src = path.read_text()
        assert "def get_config(arg=None)" in src, path
        assert "smoke" in src, path


def test_readme_step_function_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if "steps.distill_step" in b)
    namespace = {}
    exec(example, namespace)
    assert float(namespace["metrics"]["loss"]) >= 0.0
    assert int(namespace["state"].step) == 1
