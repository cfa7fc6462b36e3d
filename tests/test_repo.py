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


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_own_method_recipe_runs(tmp_path, monkeypatch):
    recipe = next(b for b in _python_blocks() if "# my_methods.py" in b)
    (tmp_path / "my_methods.py").write_text(recipe)
    monkeypatch.syspath_prepend(str(tmp_path))
    tour = {}
    exec(next(b for b in _python_blocks() if "steps.distill_step" in b), tour)
    from dopd_jax import steps
    from dopd_jax.methods import get_method

    fkl = get_method("my_methods:FKL")
    spec = steps.DistillSpec(fkl, fkl.make_config({"beta": 0.9}), tour["spec"].sampler)
    state = tour["state"]  # the tour donated its initial parameters; continue from its step
    state, metrics = steps.distill_step(
        tour["graphdefs"],
        tour["opt"],
        spec,
        state,
        {"teacher": tour["teacher_params"]},
        tour["batch"],
        tour["jax"].random.key(1),
    )
    assert float(metrics["loss"]) >= 0.0 and "kl_to_priv_teacher" in metrics


def test_readme_own_data_recipe_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace = {}
    exec(next(b for b in _python_blocks() if "run_experiment" in b), namespace)
    assert 0.0 <= namespace["results"]["methods"]["opd"]["acc_test"] <= 1.0
