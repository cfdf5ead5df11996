"""The live CrystFEL feed without Ray: the message, the geometry file, the buffer, and the
ROUTER endpoint with test-side indexamajig workers (tests/feed_client.py)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import zmq

from feed_client import Worker, geometry_keys, read_frame
from peaknet_pipeline.config.geometry import GeometryConfig
from peaknet_pipeline.writer.feed import DEMAND_S, FeedServer
from peaknet_pipeline.writer.geometry import crystfel_geometry
from peaknet_pipeline.writer.live_feed import (
    KEYS_UNAMBIGUOUS,
    NewestBuffer,
    feed_geometry,
    frame_map,
    pack,
    prefix_clashes,
)
from peaknet_pipeline.writer.peaks import find_peaks

GEOM = GeometryConfig()


def message(image, fs=(1.0,), ss=(2.0,), inten=(3.0,), ident=None) -> bytes:
    return pack(frame_map(image, np.array(fs), np.array(ss), np.array(inten), 9500.0, 100.0,
                          ident or {"source_id": "s", "batch_seq": 0, "batch_index": 0}))  # fmt: skip


def test_message_has_every_key_type_and_shape_crystfel_reads_for_a_two_panel_frame():
    frame = np.arange(2 * 8 * 6, dtype=np.float32).reshape(2, 8, 6)
    got = read_frame(
        message(frame, fs=[1, 2], ss=[9, 3], inten=[5, 6]), feed_geometry(GEOM, (2, 8, 6))
    )
    # panels stacked on the slow axis, as the CXI geometry lays them out (panel_layout)
    assert got["image"].shape == (16, 6)
    assert np.array_equal(got["image"], frame.reshape(16, 6))
    assert got["fs"].tolist() == [1.0, 2.0] and got["ss"].tolist() == [9.0, 3.0]
    assert got["photon_energy_ev"] == 9500.0 and got["clen_mm"] == 100.0


def test_peaks_are_pixel_indices_that_crystfels_half_pixel_shift_puts_at_the_pixel_centre():
    # One bright pixel at row 5, column 3: the writer's peak is at index (5, 3); indexamajig
    # adds 0.5 (its default), giving 3.5/5.5, the centre of the pixel CrystFEL spans [3, 4).
    image = np.zeros((1, 16, 16), np.float32)
    image[0, 5, 3] = 100.0
    peaks = find_peaks(image, image > 0)
    got = read_frame(
        message(image, peaks.col, peaks.row, peaks.total), feed_geometry(GEOM, (1, 16, 16))
    )
    assert (got["fs"][0], got["ss"][0]) == (3.0, 5.0)
    assert (got["fs_crystfel"][0], got["ss_crystfel"][0]) == (3.5, 5.5)
    ss, fs = np.unravel_index(np.argmax(got["image"]), got["image"].shape)
    assert (np.floor(got["fs_crystfel"][0]), np.floor(got["ss_crystfel"][0])) == (fs, ss)


def test_peak_arrays_of_unequal_length_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        frame_map(np.zeros((4, 4)), np.zeros(2), np.zeros(1), np.zeros(2), 1.0, 1.0, {})


def test_no_key_is_a_prefix_of_a_name_crystfel_looks_up():
    assert KEYS_UNAMBIGUOUS
    assert prefix_clashes(["peak", "peak_list"], ("peak_list",)) == [("peak", "peak_list")]
    assert prefix_clashes([""], ("data",)) == [("", "data")]


def test_feed_geometry_names_the_keys_and_keeps_the_cxi_geometry_panels():
    text = feed_geometry(GEOM, (2, 8, 6))
    assert geometry_keys(text) == {
        "clen": "detector_distance_mm mm",
        "photon_energy": "photon_energy_ev eV",
        "data": "peaknet_image",
        "peak_list": "peaknet_peaks",
    }
    assert "dim" not in text  # load_msgpack_data refuses dimN lines
    panel_lines = [ln for ln in text.splitlines() if re.match(r"p\d+/", ln)]
    cxi_text = crystfel_geometry(GEOM, (2, 8, 6))
    cxi_lines = [ln for ln in cxi_text.splitlines() if re.match(r"p\d+/", ln)]
    assert panel_lines == cxi_lines and len(panel_lines) == 16
    first_panel = text.splitlines().index(panel_lines[0])
    assert all("/" not in ln for ln in text.splitlines()[:first_panel] if not ln.startswith(";"))


def test_buffer_keeps_the_newest_and_counts_what_it_pushes_out():
    buf = NewestBuffer(3)
    for i in range(5):
        buf.offer(bytes([i]))
    assert buf.skipped == 2 and len(buf) == 3
    assert buf.take() == bytes([4]) and buf.take() == bytes([3])
    assert buf.drain() == 1 and buf.skipped == 3 and buf.take() is None


@pytest.fixture
def server():
    srv = FeedServer("tcp://127.0.0.1:0", buffer=4)
    yield srv
    srv.close()


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    # destroy, not term: term waits forever for a socket a test left open (one hung a CI run)
    c.destroy(linger=0)


def frames(n: int, start: int = 0) -> list[bytes]:
    img = np.ones((4, 4), np.float32)
    return [
        message(img, ident={"source_id": "s", "batch_seq": i, "batch_index": 0})
        for i in range(start, start + n)
    ]


def seq_of(raw: bytes) -> int:
    return read_frame(raw, feed_geometry(GEOM, (1, 4, 4)))["map"]["batch_seq"]


def test_a_request_waits_for_the_next_hit_and_gets_it(server, ctx):
    w = Worker(ctx, server.address)
    w.ask()
    assert w.receive(200) is None  # nothing yet: the request waits, as indexamajig's does
    (frame,) = frames(1)
    server.offer(frame)
    assert w.receive(5000) == frame
    # counted once the send returned, which may be a moment after the worker has the frame
    wait_until(lambda: server.stats()["served"] == 1)
    w.close()


def wait_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_several_workers_get_different_frames_and_never_one_twice(server, ctx):
    workers = [Worker(ctx, server.address) for _ in range(3)]
    got: dict[int, list[int]] = {i: [] for i in range(3)}
    pending = frames(12)
    while sum(map(len, got.values())) < 12:
        for w in workers:
            w.ask()
        wait_until(lambda: server.stats()["waiting_requests"] == 3)
        for _ in range(3):
            server.offer(pending.pop(0))
        for i, w in enumerate(workers):
            raw = w.receive(5000)
            assert raw is not None
            got[i].append(seq_of(raw))
    seen = [s for lst in got.values() for s in lst]
    assert sorted(seen) == list(range(12))  # every frame once, none twice
    assert all(len(lst) == 4 for lst in got.values())  # each worker's requests were answered
    for w in workers:
        w.close()


def test_a_worker_that_disconnects_mid_request_does_not_wedge_the_endpoint(server, ctx):
    gone = Worker(ctx, server.address)
    gone.ask()
    wait_until(lambda: server.stats()["waiting_requests"] == 1)
    gone.close()
    live = Worker(ctx, server.address)
    live.ask()
    received = None
    for frame in frames(3):  # the first may go to the vanished worker's pipe, or back
        server.offer(frame)
        received = live.receive(2000)
        if received is not None:
            break
    assert received is not None
    live.close()


def test_demand_is_a_waiting_request_or_a_recent_one():
    now = [0.0]
    srv = FeedServer("tcp://127.0.0.1:0", buffer=2, clock=lambda: now[0])
    c = zmq.Context()
    try:
        assert not srv.wanted()
        w = Worker(c, srv.address)
        w.ask()
        wait_until(srv.wanted)
        srv.offer(frames(1)[0])
        assert w.receive(5000) is not None
        assert srv.wanted()  # asked a moment ago: someone reads
        now[0] = DEMAND_S + 1
        assert not srv.wanted()
        w.close()
    finally:
        srv.close()
        c.destroy(linger=0)


def test_unserved_frames_count_as_skipped(server):
    for f in frames(6):
        server.offer(f)
    server.not_offered(5)
    final = server.close()
    assert final["served"] == 0 and final["skipped"] == 11
