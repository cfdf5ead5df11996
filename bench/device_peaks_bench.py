"""Peaks on the device (inference.peaks_on_device) against peaks in the writer, at detector size.

For 1691x1691 (one panel) and 8 panels of 512x1024: random-source frames (30 peaks each, batch
8) and the threshold oracle's mask. Per frame, medians over the batches:

- q2_bytes: what Q2 carries per frame: before, the uint8 mask (C*H*W bytes) plus the pickled
  record; after, the pickled record with its peak lists (inference/peaks.BatchPeaks).
- writer_cpu_ms: thread CPU time of WriterStage.process per frame (images: hits, the default;
  every frame here is a hit, so the frames are written in both cases): before it labels the
  mask and measures peaks, after it only writes.
- device_peaks_cpu_ms: thread CPU time of find_batch_peaks per frame on this CPU: the work the
  inference actor takes over when its device is the CPU (on a GPU it runs there instead).

Run: .venv/bin/python bench/device_peaks_bench.py [--batches N]; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time

import numpy as np
import torch

from peaknet_pipeline.config.models import RandomSourceConfig, WriterConfig
from peaknet_pipeline.inference.peaks import find_batch_peaks
from peaknet_pipeline.records import Batch, Result
from peaknet_pipeline.sources.random import FrameGenerator
from peaknet_pipeline.writer import WriterStage

SHAPES = {"1691x1691": [1, 1691, 1691], "8x512x1024": [8, 512, 1024]}
THRESHOLD = 50.0  # the threshold oracle's default (model.threshold)


def cpu_ms(frames: int, fn, *args) -> tuple[float, object]:
    """(thread CPU ms per frame of fn(*args), its return value)."""
    t0 = time.thread_time()
    value = fn(*args)
    return (time.thread_time() - t0) * 1e3 / frames, value


def measure(shape: list[int], batches: int, batch: int) -> dict:
    cfg = RandomSourceConfig(frame_shape=shape, peaks_per_frame=30, pool_size=2, seed=1)
    gen = FrameGenerator(cfg)
    wcfg = WriterConfig()
    before, after = (
        WriterStage(wcfg, tempfile.mkdtemp(), 0),
        WriterStage(wcfg, tempfile.mkdtemp(), 1),
    )
    rows: dict[str, list[float]] = {k: [] for k in ("q2_before", "q2_after", "w_before", "w_after")}
    rows["device"] = []
    peaks_per_frame = []
    for seq in range(batches):
        images = gen.batch(np.arange(seq * batch, (seq + 1) * batch))  # distinct frames
        masks = (images > THRESHOLD).astype(np.uint8)
        ids = np.arange(seq * batch, (seq + 1) * batch)
        meta = {"event_id": ids, "photon_energy_ev": np.full(batch, 9500.0)}
        rec = Batch.describe(images, meta, "bench", seq)
        mask_result = Result(rec, "mask", masks.shape, "|u1", "bench")
        ms, found = cpu_ms(batch, find_batch_peaks, torch.from_numpy(masks), images)
        rows["device"].append(ms)
        peaks_result = Result(rec, "peaks", (0,), "|u1", "bench", peaks=found)
        peaks_per_frame.append(float(found.counts.mean()))
        rows["q2_before"].append((len(pickle.dumps(mask_result)) + masks.nbytes) / batch)
        rows["q2_after"].append(len(pickle.dumps(peaks_result)) / batch)
        rows["w_before"].append(cpu_ms(batch, before.process, mask_result, images, masks)[0])
        rows["w_after"].append(cpu_ms(batch, after.process, peaks_result, images)[0])
    for stage in (before, after):
        stage.close()
    a, b = before.summary(), after.summary()
    assert a["peaks_written"] == b["peaks_written"] and a["hits"] == b["hits"]
    med = {k: round(statistics.median(v), 3) for k, v in rows.items()}
    return {
        "q2_bytes_per_frame": {"before": med["q2_before"], "after": med["q2_after"]},
        "writer_cpu_ms_per_frame": {"before": med["w_before"], "after": med["w_after"]},
        "device_peaks_cpu_ms_per_frame": med["device"],
        "peaks_per_frame": statistics.median(peaks_per_frame),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {"bench": "device_peaks", "batch": args.batch, "batches": args.batches}
    for name, shape in SHAPES.items():
        out[name] = measure(shape, args.batches, args.batch)
        print(name, json.dumps(out[name]), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
