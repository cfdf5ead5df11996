"""The live page's server without Ray: its endpoints over real HTTP on a free loopback port,
read-only (405 for any other method), 404 and 400 for bad paths and queries, one line (never
a traceback) for an error inside, clients that vanish mid-response, and no calls to the
writers while nobody watches."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time

import numpy as np
import pytest
from test_live_view import Clock, decode_png, peaks, result

from peaknet_pipeline.config.geometry import GeometryConfig
from peaknet_pipeline.monitor import live_server
from peaknet_pipeline.monitor.latency import LatencyTracker
from peaknet_pipeline.monitor.live_data import LiveState
from peaknet_pipeline.monitor.live_server import LiveServer
from peaknet_pipeline.monitor.liveview import LiveView
from peaknet_pipeline.monitor.timeseries import Sample, TimeSeries


def sample(t: float, frames: int, hits: int) -> Sample:
    lat = LatencyTracker()
    lat.observe(np.full(frames, 100.0), 100.25)
    return Sample(
        t=t,
        actors={
            "random-0": {"role": "ingest", "phase": "running", "frames_out": frames + 4},
            "inference-0": {
                "role": "inference",
                "phase": "running",
                "frames_out": frames,
                "busy_s": t / 2,
                "device": "cpu",
                "gpu": None,
            },
            "writer-0": {
                "role": "writer",
                "phase": "running",
                "frames_out": frames,
                "hits": hits,
                "non_hits": frames - hits,
                "failed": {},
                "latency": lat.as_dict(100.25),
            },
        },  # fmt: skip
        queues={"Q1": {"depth": 2, "capacity_items": 8, "bytes": 0, "capacity_bytes": 0}},
        pool={"desired": 1, "running": 1, "starting": 0, "retiring": 0},
    )


class Writers:
    """The writers' live views as the refresher fetches them (one LiveView, watched)."""

    def __init__(self) -> None:
        self.calls = 0
        self.live = LiveView(GeometryConfig(), min_peaks=1, clock=Clock(), wall=time.time)
        self.live.view()  # watched from the start
        frame = np.random.default_rng(0).random((1, 1, 64, 64)).astype(np.float32)
        self.live(result([5], t=time.time()), [peaks([10], [12], [300.0])], np.array([True]), frame)

    def __call__(self, known):
        self.calls += 1
        return {"writer-0": self.live.view(known.get("writer-0", 0))}


@pytest.fixture(scope="module")
def served():
    patch = pytest.MonkeyPatch()
    patch.setattr(live_server, "REFRESH_S", 0.02)
    writers = Writers()
    state = LiveState("run-x", min_peaks=1, views=writers)
    state.series = TimeSeries()
    for i in range(4):
        state.series.add(sample(float(i), 10 * i, 4 * i))
    server = LiveServer(("127.0.0.1", 0), state).start()
    yield server, writers
    server.close()
    patch.undo()


def get(server, path, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.url_port, timeout=10)
    conn.request(method, path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body


def strict_json(body: bytes):
    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    return json.loads(body, parse_constant=refuse)


def wait_for(check, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return got


def test_the_page_and_every_json_endpoint_answer(served):
    server, writers = served
    code, headers, body = get(server, "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<canvas" in body and b"http://" not in body and b"https://" not in body
    s = strict_json(get(server, "/api/summary")[2])
    assert s["run_id"] == "run-x" and s["frames"]["written"] == 30 and s["hits"] == 12
    assert s["hit_rate"] == pytest.approx(0.4) and s["fps"]["written"] == pytest.approx(10)
    assert s["hit_rate_last_minute"] == pytest.approx(0.4)
    assert s["latency"]["last_minute"]["count"] == 30
    series = strict_json(get(server, "/api/series")[2])
    assert series["t"] == [1.0, 2.0, 3.0] and series["hit_rate"] == [0.4, 0.4, 0.4]
    assert series["q1_fill"] == [0.25] * 3 and series["min_peaks"] == 1
    health = strict_json(get(server, "/api/health")[2])
    assert health["pool"]["desired"] == 1 and health["inference"]["busy"] == pytest.approx(0.5)
    assert health["lost"]["writer_failed"] == 0
    hits = wait_for(lambda: strict_json(get(server, "/api/hits")[2]))  # once refreshed
    assert hits[0]["event_id"] == 5 and hits[0]["npeaks"] == 1
    code, headers, png = get(server, hits[0]["image"] + "?lo=2&hi=98&cmap=grey&max=32")
    assert code == 200 and headers["Content-Type"] == "image/png"
    assert decode_png(png).shape == (32, 32, 3)
    peaks_doc = strict_json(get(server, "/api/peaks")[2])
    assert peaks_doc["per_frame"][1] == 1 and sum(map(sum, peaks_doc["peakogram"]["counts"])) == 1
    powder = strict_json(get(server, "/api/powder")[2])
    assert sum(map(sum, powder["counts"])) == 1
    assert decode_png(get(server, "/powder.png?cmap=grey&v=1")[2]).shape == (64, 64, 3)
    assert get(server, "/api/summary", "HEAD")[2] == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FROB"])
def test_it_is_read_only(served, method):
    code, headers, body = get(served[0], "/api/summary", method)
    assert code == 405 and headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/nothing", 404),
        ("/hits/999.png", 404),
        ("/hits/x.png", 404),
        ("/hits/../etc/passwd", 404),
        ("/api/summary?x=1", 400),
        ("/hits/1.png?lo=90&hi=10", 400),
        ("/hits/1.png?lo=abc", 400),
        ("/hits/1.png?cmap=jet", 400),
        ("/hits/1.png?max=1&max=2", 400),
        ("/powder.png?cmap=x", 400),
        ("/api/hits?&&=", 400),
    ],
)
def test_bad_paths_and_queries_are_refused_in_one_line(served, path, code):
    got, _, body = get(served[0], path)
    assert got == code and b"Traceback" not in body and body.count(b"\n") <= 1


def test_an_error_inside_is_one_line_and_the_server_goes_on(served, monkeypatch):
    server, _ = served
    monkeypatch.setattr(server.state, "health_doc", lambda: 1 / 0)
    code, _, body = get(server, "/api/health")
    assert code == 500 and body == b"internal error\n"
    assert get(server, "/api/summary")[0] == 200


def raw(server, data: bytes, read: bool = True, reset: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", server.url_port), timeout=10) as s:
        if reset:  # close with RST: the server's write fails mid-response
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(data)
        return s.recv(4096) if read else b""


def test_malformed_requests_and_vanishing_clients_leave_it_serving(served):
    server, _ = served
    # Refused before a version is known: answered as HTTP/0.9 does, a bare error body.
    for line in (b"GARBAGE", b"GET / NOT-HTTP", b"GET /\x00 HTTP/1.1 extra"):
        got = raw(server, line + b"\r\n\r\n")
        assert b"400" in got and b"Traceback" not in got
    assert b"505" in raw(server, b"GET /api/summary HTTP/9.9\r\n\r\n")
    assert b"414" in raw(server, b"GET " + b"/a" * 40000 + b" HTTP/1.1\r\n\r\n")
    hit = wait_for(lambda: strict_json(get(server, "/api/hits")[2]))[0]["image"]
    for path in ("/", hit, "/api/events"):  # gone before (or while) the answer is written
        raw(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), read=False, reset=True)
    head = raw(server, b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")  # an event stream, left
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    for _ in range(20):  # many tabs at once
        assert get(server, "/api/summary")[0] == 200
    wait_for(lambda: server._streams == 0)  # the streams noticed their clients left


def test_nobody_watching_means_no_calls_to_the_writers():
    clock = Clock()
    writers = Writers()
    server = LiveServer(("127.0.0.1", 0), LiveState("r", 1, views=writers), clock=clock)
    try:
        assert not server.watched()
        server.touch()
        assert server.watched()
        clock.t += live_server.WATCH_S + 0.1
        assert not server.watched()
        assert server.stream_opened() and server.watched()  # an open event stream watches
        server.stream_closed()
    finally:
        server.close()
    assert writers.calls == 0  # never started, never asked
