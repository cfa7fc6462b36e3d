"""The experiment runner across 2 processes x 2 CPU devices: preemption of one host, a
damaged checkpoint, and exact agreement with one process x 4 devices.

Two ``python -m dopd_jax.run`` processes (gloo collectives, ``jax.distributed``
on localhost) share one workdir. Mid-distillation, SIGTERM reaches process 1
only: both processes must stop after the same step, write one checkpoint and
exit with 143. The latest checkpoint is then damaged; the restart must set it
aside on every process, resume from the previous one and finish. The same
smoke config then runs in one process over 4 devices with the same mesh shape:
distillation metrics and the results table must agree, and only process 0 may
have written the files.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import processes

from dopd_jax.trainer.metric_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "experiments/privilege_illusion.py:smoke"
NUM_PROCESSES = 2
TIMEOUT_S = 300
STEPS = 8
COMMON = [
    "--config",
    SMOKE,
    "--config.distill.methods=('dopd',)",
    "--config.mesh.data=4",
    f"--config.distill.steps={STEPS}",
    "--config.distill.checkpoint_every=1",
]
COMPARED = ("loss", "A_bar", "frac_HS")
CKPT = "ckpt/distill/dopd"


def _commands(workdir: pathlib.Path) -> list:
    port = processes.free_port()
    return [
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


def _preempt_one_process(workdir: pathlib.Path, logdir: pathlib.Path) -> int:
    """Runs until distillation has checkpointed step 2, SIGTERMs process 1 alone; returns
    the step both processes stopped after."""
    env = processes.cpu_env(2)
    logs = [open(logdir / f"preempted{i}.log", "w") for i in range(NUM_PROCESSES)]
    procs = [
        subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        for cmd, log in zip(_commands(workdir), logs)
    ]
    try:
        deadline = time.time() + TIMEOUT_S
        while not (workdir / CKPT / "2").exists() and time.time() < deadline:
            assert all(p.poll() is None for p in procs), "a process ended early"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in logs:
            f.close()
    text = (logdir / "preempted0.log").read_text()
    assert codes == [128 + signal.SIGTERM] * NUM_PROCESSES, (codes, text[-3000:])
    stopped = int(text.split("SIGTERM: stopped after step ")[1].split()[0])
    assert 2 <= stopped < STEPS
    return stopped


def test_preempted_damaged_two_process_run_resumes_and_matches_one_process(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    stopped = _preempt_one_process(multi, tmp_path)
    steps = sorted(int(d) for d in os.listdir(multi / CKPT) if d.isdigit())
    assert steps[-1] == stopped  # one consistent checkpoint of the agreed step
    (multi / CKPT / str(stopped) / "meta" / "metadata").write_text('{"payload": {')
    processes.run_all(_commands(multi), processes.cpu_env(2), tmp_path, TIMEOUT_S)
    assert (multi / CKPT / f"{stopped}.corrupt").is_dir()
    assert f"{CKPT}/{stopped} is damaged" in (tmp_path / "process0.log").read_text()
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
    logged = list(range(2, STEPS + 1, 2))
    assert [r["step"] for r in rows_m] == [r["step"] for r in rows_s] == logged  # written once
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
