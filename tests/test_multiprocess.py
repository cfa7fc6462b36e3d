"""Two processes x two CPU devices (gloo collectives) match a single-device run.

Each child (``multiprocess_worker.py``) joins ``jax.distributed``, feeds only
its own batch rows, runs sharded SFT and DOPD steps on a mesh whose ``fsdp``
axis spans both processes, and writes its losses; this process computes the
same steps on one device and compares.
"""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import processes

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "multiprocess_worker.py"
NUM_PROCESSES = 2
TIMEOUT_S = 150


def _load_worker():
    spec = importlib.util.spec_from_file_location("multiprocess_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_children(tmp_path, while_running) -> tuple[list[dict], object]:
    """Runs the workers; calls ``while_running()`` meanwhile and returns its value too."""
    port = processes.free_port()
    outs = [tmp_path / f"process{i}.json" for i in range(NUM_PROCESSES)]
    commands = [
        [sys.executable, str(WORKER), str(i), str(NUM_PROCESSES), str(port), str(outs[i])]
        for i in range(NUM_PROCESSES)
    ]
    local = processes.run_all(commands, processes.cpu_env(2), tmp_path, TIMEOUT_S, while_running)
    return [json.loads(o.read_text()) for o in outs], local


def test_two_processes_match_single_device(tmp_path):
    worker = _load_worker()
    results, reference = _run_children(tmp_path, lambda: worker.run_steps(mesh=None))
    assert len(reference["distill_loss"]) == worker.STEPS
    for r in results:
        assert r["devices"] == 4
        # A mesh that would not give this process contiguous rows is refused by name.
        assert "are not contiguous" in r["interleaved"], r["interleaved"]
        for name in ("sft_loss", "distill_loss", "distill_kl"):
            np.testing.assert_allclose(
                r[name],
                reference[name],
                rtol=1e-4,
                atol=1e-6,
                err_msg=f"process {r['process']} {name}",
            )
    assert {r["process"] for r in results} == set(range(NUM_PROCESSES))
