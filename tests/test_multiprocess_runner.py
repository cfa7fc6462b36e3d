"""The experiment runner across 2 processes x 2 CPU devices matches one process x 4 devices.

Two ``python -m dopd_jax.run`` processes (gloo collectives, ``jax.distributed``
on localhost) share one workdir; the same smoke config then runs in one
process over 4 devices with the same mesh shape. Distillation metrics and the
results table must agree, and only process 0 may have written the files.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import processes

from dopd_jax.trainer.metric_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "experiments/privilege_illusion.py:smoke"
NUM_PROCESSES = 2
TIMEOUT_S = 300
COMMON = ["--config", SMOKE, "--config.distill.methods=('dopd',)", "--config.mesh.data=4"]
COMPARED = ("loss", "A_bar", "frac_HS")


def _run_processes(workdir: pathlib.Path, logdir: pathlib.Path) -> None:
    """Runs the runner as NUM_PROCESSES processes; kills any left running."""
    port = processes.free_port()
    commands = [
        [
            sys.executable,
            "-m",
            "dopd_jax.run",
            *COMMON,
            "--workdir",
            str(workdir),
            f"--config.distributed.num_processes={NUM_PROCESSES}",
            f"--config.distributed.process_id={i}",
            f"--config.distributed.coordinator_address=localhost:{port}",
        ]
        for i in range(NUM_PROCESSES)
    ]
    processes.run_all(commands, processes.cpu_env(2), logdir, TIMEOUT_S)


def test_two_process_runner_matches_one_process(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    _run_processes(multi, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "dopd_jax.run", *COMMON, "--workdir", str(single)],
        env=processes.cpu_env(4),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    rows_m = read_metrics(str(multi), "distill/dopd")
    rows_s = read_metrics(str(single), "distill/dopd")
    assert [r["step"] for r in rows_m] == [r["step"] for r in rows_s] == [2, 4]  # written once
    for rm, rs in zip(rows_m, rows_s):
        for k in COMPARED:
            np.testing.assert_allclose(
                rm[k], rs[k], rtol=1e-4, atol=1e-7, err_msg=f"step {rm['step']} {k}"
            )
    res_m = json.loads((multi / "results.json").read_text())
    res_s = json.loads((single / "results.json").read_text())
    for name in ("teacher", "student_init"):
        assert res_m["references"][name] == res_s["references"][name], name
    for k in ("acc_test", "acc_hard", "acc_priv"):
        assert res_m["methods"]["dopd"][k] == res_s["methods"]["dopd"][k], k
    # Only process 0 printed the table.
    assert (
        sum(
            "student_init" in (tmp_path / f"process{i}.log").read_text()
            for i in range(NUM_PROCESSES)
        )
        == 1
    )
