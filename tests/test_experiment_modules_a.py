"""Experiment modules in smoke mode, half a (see experiment_modules.py)."""

import pytest
from experiment_modules import HALVES, check_module_smoke, shared  # noqa: F401


@pytest.mark.parametrize("name", HALVES[0])
def test_module_smoke_runs_every_run_and_reports(name, shared):  # noqa: F811
    check_module_smoke(name, shared)
