"""Launching and cleaning up the child processes of multi-process tests."""

import os
import pathlib
import socket
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Every test process compiles at XLA's backend optimization level 0 (conftest.py says why).
XLA_OPT = "--xla_backend_optimization_level=0"


def free_port() -> int:
    """A localhost TCP port that was free a moment ago (for the coordinator)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def cpu_env(devices: int) -> dict:
    """Environment of a child with ``devices`` simulated CPU devices."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {XLA_OPT}",
        JAX_PLATFORMS="cpu",
    )
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def run_all(commands, env, logdir: pathlib.Path, timeout: float, while_running=None):
    """Runs ``commands`` concurrently, logging to ``logdir/process{i}.log``.

    Calls ``while_running()`` after starting them and returns its value. Any
    child still running at the end (timeout, failure) is killed; a non-zero
    exit fails the test with the child's log tail.
    """
    procs, logs = [], [open(logdir / f"process{i}.log", "w") for i in range(len(commands))]
    local = None
    try:
        for cmd, log in zip(commands, logs):
            procs.append(
                subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            )
        local = while_running() if while_running else None
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    for i, p in enumerate(procs):
        log = (logdir / f"process{i}.log").read_text()[-3000:]
        assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{log}"
    return local
