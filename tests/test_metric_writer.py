"""MetricWriter: JSON lines round trip and TensorBoard purge after a resume."""

import pathlib
import struct

from tensorboardX.proto import event_pb2

from dopd_jax.trainer.metric_writer import MetricWriter, read_metrics


def _events(run_dir: pathlib.Path):
    """All events of a TensorBoard run directory (TFRecord framing)."""
    out = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12 : pos + 12 + length])
            out.append(event)
            pos += 12 + length + 4
    return out


def test_jsonl_round_trip(tmp_path):
    w = MetricWriter(str(tmp_path), tensorboard=False)
    w.write("distill/dopd", 10, {"loss": 1.5, "frac_HS": 0.25})
    w.write("teacher_sft", 10, {"loss": 0.5})
    assert read_metrics(str(tmp_path), "distill/dopd") == [
        {"run": "distill/dopd", "step": 10, "loss": 1.5, "frac_HS": 0.25}
    ]
    assert len(read_metrics(str(tmp_path))) == 2


def test_resumed_run_purges_later_tensorboard_events(tmp_path):
    w = MetricWriter(str(tmp_path))
    for step in (1, 2, 3, 4):
        w.write("distill/dopd", step, {"loss": float(step)})
    w.close()
    w = MetricWriter(str(tmp_path))
    w.resume("distill/dopd", 2)  # restored after step 2: steps 3-4 are stale
    w.write("distill/dopd", 3, {"loss": 30.0})
    w.close()
    events = _events(tmp_path / "tb" / "distill_dopd")
    purges = [
        e.step
        for e in events
        if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START
    ]
    assert 3 in purges
