"""writer.live_feed in a whole run: three test-side indexamajig workers (feed_client.py) ask
the run's one endpoint for frames while it runs; each frame is what CrystFEL's MsgPack reader
accepts, carries the peaks and image the CXI files hold for that event, no frame comes twice,
and report.json counts every hit as served or skipped."""

from __future__ import annotations

import socket
import threading

import h5py
import numpy as np
import pytest
import zmq
from runs import DriverThread, random_run

from feed_client import Worker, read_frame
from peaknet_pipeline.writer.layout import DATA, PROV, RESULT
from peaknet_pipeline.writer.live_feed import GEOMETRY_FILE

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cxi_rows(paths) -> dict[tuple, dict]:
    """(source_id, batch_seq, batch_index) -> that row's peaks and frame, from the CXI files."""
    rows = {}
    for path in paths:
        with h5py.File(path, "r") as f:
            if f"{PROV}/source_id" not in f:
                continue
            ids = zip(
                f[f"{PROV}/source_id"].asstr()[:],
                f[f"{PROV}/batch_seq"][:],
                f[f"{PROV}/batch_index"][:],
            )
            for i, key in enumerate(ids):
                n = int(f[f"{RESULT}/nPeaks"][i])
                rows[(key[0], int(key[1]), int(key[2]))] = {
                    "fs": f[f"{RESULT}/peakXPosRaw"][i, :n],
                    "ss": f[f"{RESULT}/peakYPosRaw"][i, :n],
                    "intensity": f[f"{RESULT}/peakTotalIntensity"][i, :n],
                    "image": f[DATA][i],
                }
    return rows


def test_workers_get_distinct_frames_with_the_cxi_files_peaks_and_every_hit_is_counted(
    ray_session, tmp_path, unique_name
):
    address = f"tcp://127.0.0.1:{free_port()}"
    overrides = (
        "writer.live_feed.enabled=true",
        f"writer.live_feed.bind={address}",
        "writer.live_feed.buffer=4",
        "writer.compression=gzip",
        "source.random.frame_shape=[2,32,32]",
    )
    driver = DriverThread(random_run(tmp_path, unique_name, 600, 150.0, overrides))
    ctx = zmq.Context()
    received: list[list[bytes]] = [[], [], []]

    def indexamajig_worker(got: list[bytes]) -> None:
        w = Worker(ctx, address)
        while driver.is_alive():
            w.ask()
            raw = w.receive(100)
            if raw is not None:
                got.append(raw)
        if w.waiting:  # a frame the feed sent just before it stopped
            raw = w.receive(500)
            if raw is not None:
                got.append(raw)
        w.close()

    driver.start()
    workers = [threading.Thread(target=indexamajig_worker, args=(r,)) for r in received]
    for t in workers:
        t.start()
    report = driver.finish()
    for t in workers:
        t.join(timeout=10)
    ctx.destroy(linger=0)  # a worker still waiting (joined with a timeout) must not hang term

    run_dir = tmp_path / unique_name
    geometry = (run_dir / GEOMETRY_FILE).read_text()
    frames = [[read_frame(raw, geometry) for raw in got] for got in received]
    keys = [
        (f["map"]["source_id"], f["map"]["batch_seq"], f["map"]["batch_index"])
        for w in frames
        for f in w
    ]
    assert all(frames), "every worker got frames"
    assert len(keys) == len(set(keys)), "no frame twice, across workers"
    rows = cxi_rows(sorted(run_dir.glob("*.cxi")))
    for frame, key in zip((f for w in frames for f in w), keys, strict=True):
        row = rows[key]
        assert frame["image"].shape == (64, 32)  # two 32x32 panels stacked, as the CXI slab
        np.testing.assert_array_equal(frame["image"], row["image"])
        # the same pixel-index numbers; indexamajig adds 0.5 to both (--peaks=cxi and msgpack)
        np.testing.assert_array_equal(frame["fs"].astype(np.float32), row["fs"])
        np.testing.assert_array_equal(frame["ss"].astype(np.float32), row["ss"])
        np.testing.assert_array_equal(frame["intensity"].astype(np.float32), row["intensity"])
        assert frame["clen_mm"] == pytest.approx(
            report["config"]["writer"]["geometry"]["camera_length_m"] * 1e3
        )
    feed = report["live_feed"]
    assert feed["served"] == len(keys)
    hits = sum(w["hits"] for w in report["writer"])
    assert feed["served"] + feed["skipped"] == hits == 600
