"""A service's socket source follows the DAQ's runs (issue 23, items 1 and 2): the ingest loop
alone (no Ray), fed by `peaknet-pipeline push --daq-runs` in a subprocess, like LCLStreamer."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pytest

from helpers import STARTED_PUSHERS
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.sources.daq_run import LABEL
from peaknet_pipeline.sources.push import PUSH_EXTRA, RUN_FIELDS
from peaknet_pipeline.sources.socket import SocketSource


def _service(
    fmt: str, field: str | None, gap_s: float, service: bool = True, timeout_s: float = 0.5
) -> PipelineConfig:
    socket = {
        "format": fmt,
        "addresses": ["tcp://127.0.0.1:0"],
        "idle_timeout_s": timeout_s,  # shorter than the pauses: a service must not end on it
        "start_timeout_s": timeout_s,
        fmt: {"extra": PUSH_EXTRA[fmt]},
        "daq_run": {"field": field, "gap_s": gap_s},
    }
    return PipelineConfig.model_validate(
        {"runtime": {"service": service}, "source": {"kind": "socket", "socket": socket}}
    )


def _ingest(source: SocketSource, pusher: subprocess.Popen, frames: int) -> list[tuple]:
    """Every batch until `frames` frames arrived, then stop() (a service never ends alone)."""
    batches, got = [], 0
    for images, meta in source.batches():
        batches.append((images.shape[0], meta))
        got += images.shape[0]
        if got >= frames:
            source.stop()
    assert pusher.wait(timeout=60) == 0, pusher.stderr.read()
    return batches


def _push(endpoint: str, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "peaknet_pipeline.sources.push", "--address", endpoint]
    cmd += ["--num-frames", "12", "--batch-size", "8", "--shape", "16", "16"]
    cmd += ["--peaks-per-frame", "0", "--daq-runs", "2", *args]
    pusher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED_PUSHERS.append(pusher)
    return pusher


@pytest.mark.parametrize(
    "fmt, field, gap",
    [("hdf5", "none", "2.5"), ("npz", "run_info", "0")],
    ids=["hdf5-pause", "npz-run_info-no-pause"],
)
def test_a_service_labels_each_daq_run_and_no_batch_spans_two(fmt, field, gap, caplog):
    """Two DAQ runs of 12 frames in messages of 8 (8 + 4 each). HDF5 with only a pause: the
    pause (2.5 s > gap_s 1 s, and longer than idle_timeout_s, which a service ignores) starts
    a new run named from its first frame's time. NPZ with run_info and no pause: the field
    decides."""
    path = RUN_FIELDS.get((fmt, field))
    source = SocketSource("socket-0", None, _service(fmt, path, gap_s=1.0), 0)
    source.ready()
    t0 = time.time()
    pusher = _push(
        source.endpoint(), "--format", fmt, "--daq-run-field", field, "--daq-run-gap-s", gap
    )
    with caplog.at_level(logging.INFO, logger="peaknet_pipeline.sources.socket"):
        batches = _ingest(source, pusher, frames=24)
    labels = [meta["daq_run"] for _, meta in batches]
    assert all(len(set(lab.tolist())) == 1 for lab in labels)  # one DAQ run per batch
    runs = [lab[0] for lab in labels]
    assert [n for n, _ in batches] == [8, 4, 8, 4]
    assert runs[0] == runs[1] != runs[2] == runs[3], runs
    if field == "run_info":
        assert runs[::2] == ["cxi12345-r0001", "cxi12345-r0002"]
    else:
        assert all(LABEL.match(r) and r.startswith("run-2") for r in runs)
        assert runs[0] >= time.strftime("run-%Y%m%dT%H%M%SZ", time.gmtime(int(t0)))
    assert all("daq_run_field" not in meta for _, meta in batches)  # not passed on
    assert source.end_reason() == "stopped"
    begun = [r.getMessage() for r in caplog.records if "DAQ run" in r.getMessage()]
    assert begun == [f"socket-0: DAQ run {runs[0]} begins", f"socket-0: DAQ run {runs[2]} begins"]


def test_outside_a_service_nothing_is_labelled_and_idle_ends_the_stream():
    # A finite run's timeouts hold: long enough for the pusher (a new process) to start and
    # send its messages back to back on a busy machine, then idle ends the stream.
    cfg = _service("hdf5", None, 1.0, service=False, timeout_s=5.0)
    source = SocketSource("socket-0", None, cfg, 0)
    source.ready()
    pusher = _push(source.endpoint(), "--daq-run-gap-s", "0")
    batches = [(images.shape[0], meta) for images, meta in source.batches()]
    assert pusher.wait(timeout=60) == 0
    assert sum(n for n, _ in batches) == 24
    assert all("daq_run" not in meta for _, meta in batches)
    assert source.end_reason().startswith("idle timeout")


def test_an_idle_service_keeps_waiting_and_says_so_at_its_own_interval(caplog, monkeypatch):
    """start_timeout_s and idle_timeout_s (0.5 s) do not end a service; it says "waiting for
    data on ADDRESS" after SERVICE_WAITING_FIRST_S, then every SERVICE_WAITING_EVERY_S (10 s
    and 60 s; shortened here), until stopped."""
    from peaknet_pipeline.sources import socket as socket_source

    monkeypatch.setattr(socket_source, "SERVICE_WAITING_FIRST_S", 0.3)
    monkeypatch.setattr(socket_source, "SERVICE_WAITING_EVERY_S", 0.6)
    source = SocketSource("socket-0", None, _service("hdf5", None, 1.0), 0)
    source.ready()
    stopper = threading.Timer(1.6, source.stop)  # past both timeouts: lines at 0, 0.3, 0.9, 1.5
    stopper.start()
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="peaknet_pipeline.sources.socket"):
        assert list(source.batches()) == []
    assert time.monotonic() - t0 >= 1.6 and source.end_reason() == "stopped"
    said = [r.getMessage() for r in caplog.records if "waiting for data" in r.getMessage()]
    assert 3 <= len(said) <= 4, said  # not one a poll (POLL_S): 1.6 s would make 16
    assert set(said) == {f"socket-0: waiting for data on {source.endpoint()}"}, said
