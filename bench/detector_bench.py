"""Detector-size benchmark: CPU milliseconds per frame of every stage outside the model, at
1691x1691 (ePix10k2M assembled, one panel) and 4 Mpixel (8 panels of 512x1024, Jungfrau-like),
each stage against a floor measured in the same run.

The stages' own code is driven directly, one thread, no Ray in the timed path except `put`:

ingest     receive   zmq PULL of the pusher's messages (sources.transport.open_pull); its CPU is
                     everything this process burns in the receive loop except decoding (the
                     zmq I/O thread included)
           decode    sources.wire.Decoder (uncompressed float32 decodes in place: no copy)
           put       Batch.describe + ray.put of the batch (the object-store copy a Q1 put
                     makes); with --no-ray a numpy copy of the batch stands in for ray.put
           floor     receive + decode of the same messages
inference  staging   Slot.stage (host buffer + pad_into: the copy into the padded layout)
           padding   pad_into alone, into a reused buffer
           output    to_output (crop + two-class comparison) + output_array
           floor     a memcpy of the frame (np.copyto into a buffer of the same shape)
           model     the threshold oracle's forward pass, for reference (not a stage cost)
writer     peaks     writer.peaks.find_peaks; floor: np.flatnonzero of the mask
           writing   WriterStage.process with images: none (peak tables and metadata rows),
                     less peak finding
           compress  WriterStage.process with the default config (frames of hits written,
                     bitshuffle_lz4) less with images: none: compressing and writing the
                     frame; floor: the frame alone through the same HDF5 filter, in memory
           busy      WriterStage.process with the default config, per hit frame: what the
                     writer's busy_s in report.json counts

Frames are the pusher's synthetic frames (sources.random.FrameGenerator: Gaussian peaks on a
Poisson background), masks the threshold oracle's (model.kind=threshold), every frame a hit.
CPU ms is process CPU time (time.process_time) per frame, median over --repeats; frames/s is
one thread's wall-clock rate for the stage. Shared cores make wall time noisy; CPU time less so.

    .venv/bin/python bench/detector_bench.py            # both detectors (a minute or two)
    .venv/bin/python bench/detector_bench.py --quick    # tiny shapes, no Ray: a smoke test

The last line is one JSON object {"bench": "detector", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

DETECTORS = {"1691x1691": (1, 1691, 1691), "4Mpix": (8, 512, 1024)}
QUICK = {"quick": (2, 64, 96)}
RECV_TIMEOUT_S = 120.0  # no message for this long: the pusher is stuck or dead


def timed(
    fn: Callable[[], object], repeats: int, frames: int, warm: bool = True
) -> dict[str, float]:
    """Median CPU ms and wall ms per frame of `fn` (which handles `frames` frames a call),
    after one untimed call (imports, first allocations) unless `warm` is False."""
    if warm:
        fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append((time.process_time() - c0) * 1e3 / frames)
        wall.append((time.perf_counter() - w0) * 1e3 / frames)
    return {"cpu_ms": statistics.median(cpu), "wall_ms": statistics.median(wall)}


def make_batch(shape: tuple[int, int, int], batch: int, peaks: int) -> np.ndarray:
    """(batch, C, H, W) float32 frames exactly as `peaknet-pipeline push` makes them."""
    from peaknet_pipeline.config.models import RandomSourceConfig
    from peaknet_pipeline.sources.random import FrameGenerator

    cfg = RandomSourceConfig(frame_shape=list(shape), peaks_per_frame=peaks, pool_size=2)
    return FrameGenerator(cfg).batch(np.arange(batch))


# -- ingest ------------------------------------------------------------------------------------
def bench_ingest(args, shape, batch: int, messages: int) -> dict[str, dict[str, float]]:
    """receive and decode from a pusher subprocess, then put, per frame."""
    from peaknet_pipeline.config import SocketSourceConfig
    from peaknet_pipeline.records import Batch
    from peaknet_pipeline.sources.transport import open_pull
    from peaknet_pipeline.sources.wire import Decoder

    cfg = SocketSourceConfig()
    decode = Decoder(cfg)
    sock = open_pull("zmq", "tcp://127.0.0.1:0", "bind", cfg.recv_hwm)
    cmd = [sys.executable, "-m", "peaknet_pipeline.sources.push", "--address", sock.endpoint]
    cmd += ["--num-frames", str(batch * messages), "--batch-size", str(batch), "--pool", "2"]
    cmd += ["--shape", *map(str, shape), "--peaks-per-frame", str(args.peaks), "--linger-s", "5"]
    pusher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    recv_wall, decode_cpu, decode_wall, last = [], [], [], None
    try:
        got, last_arrival = None, time.monotonic()
        while got is None:  # the first message: start-up, not measured
            got = sock.recv()
            if got is None and time.monotonic() - last_arrival > RECV_TIMEOUT_S:
                raise RuntimeError(f"no message from the pusher: {pusher.stderr.read()[-2000:]}")
        decode(got[1])
        got = None
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(messages - 1):
            r0 = time.perf_counter()
            while (got := sock.recv()) is None:
                if time.perf_counter() - r0 > RECV_TIMEOUT_S:
                    raise RuntimeError(f"pusher stalled: {pusher.stderr.read()[-2000:]}")
            recv_wall.append(time.perf_counter() - r0)
            t0, d0 = time.thread_time(), time.perf_counter()
            images, meta = decode(got[1])
            decode_cpu.append(time.thread_time() - t0)
            decode_wall.append(time.perf_counter() - d0)
            last, got = (images.copy(), meta), None  # own the pixels: the message goes
        loop_cpu, loop_wall = time.process_time() - c0, time.perf_counter() - w0
        pusher.wait(timeout=RECV_TIMEOUT_S)
    finally:
        pusher.kill()
        sock.close()
    n = batch * (messages - 1)
    ms = 1e3 / n
    dec_cpu = sum(decode_cpu) * ms
    out = {
        "receive": {"cpu_ms": loop_cpu * ms - dec_cpu, "wall_ms": sum(recv_wall) * ms},
        "decode": {"cpu_ms": dec_cpu, "wall_ms": sum(decode_wall) * ms},
    }
    out["floor"] = {"cpu_ms": loop_cpu * ms, "wall_ms": loop_wall * ms}
    images, meta = last
    if args.no_ray:
        put = lambda: (Batch.describe(images, meta, "bench", 0), images.copy())  # noqa: E731
    else:
        import ray

        put = lambda: (Batch.describe(images, meta, "bench", 0), ray.put(images))  # noqa: E731
    for _ in range(6):  # the object store's first use of its memory faults pages in: once
        put()
    out["put"] = timed(put, args.repeats, batch)
    return out


# -- inference ---------------------------------------------------------------------------------
def bench_inference(args, images: np.ndarray) -> tuple[dict, np.ndarray]:
    """staging, padding and output of one batch through the threshold oracle; the masks."""
    import torch

    from peaknet_pipeline.inference.engine import Engine, to_output
    from peaknet_pipeline.inference.geometry import geometry, output_array, pad_into
    from peaknet_pipeline.inference.runners import Slot
    from peaknet_pipeline.model import ThresholdModel

    torch.set_num_threads(1)
    b = images.shape[0]
    geo = geometry(images.shape, "center")
    engine = Engine(ThresholdModel(args.threshold), output="mask")
    slot = Slot(0)
    slot.stage(images, geo)
    x = slot.host_input()
    with torch.inference_mode():
        logits = engine.model(x)

    def output() -> np.ndarray:
        return output_array(to_output(logits, geo, "mask").numpy(), geo, "mask")

    padded = np.empty((geo.n, geo.padded_height, geo.padded_width), dtype=np.float32)
    same = np.empty_like(images)
    out = {
        "staging": timed(lambda: slot.stage(images, geo), args.repeats, b),
        "padding": timed(lambda: pad_into(padded, images, geo), args.repeats, b),
        "output": timed(output, args.repeats, b),
        "floor": timed(lambda: np.copyto(same, images), args.repeats, b),
    }
    with torch.inference_mode():
        out["model"] = timed(lambda: engine.model(x), args.repeats, b)
    masks = output()
    assert np.array_equal(masks, (images > args.threshold).astype(np.uint8))
    return out, masks


# -- writer ------------------------------------------------------------------------------------
def bench_writer(args, images: np.ndarray, masks: np.ndarray, tmp: str) -> dict:
    """peak finding, writing and compression per hit frame, each against its floor."""
    import h5py

    from peaknet_pipeline.config import WriterConfig
    from peaknet_pipeline.records import Batch, Result
    from peaknet_pipeline.writer import WriterStage
    from peaknet_pipeline.writer.cxi import compression_options
    from peaknet_pipeline.writer.peaks import find_peaks

    b = images.shape[0]
    meta = {
        "event_id": np.arange(b),
        "timestamp": np.arange(b, dtype=np.uint64) + (np.uint64(1) << np.uint64(40)),
        "wavelength_nm": np.full(b, 0.13),
    }

    def process_per_frame(images_kept: str | None) -> tuple[dict[str, float], float, int]:
        """(timing, busy ms per event from the stage's own busy_s, peaks found a frame) of
        WriterStage.process: the default config (images: hits, bitshuffle_lz4), or with
        `images_kept` (none: peak tables and metadata only)."""
        out = tempfile.mkdtemp(dir=tmp)
        # min_peaks 10 is the default (fewer only for --quick's tiny frames)
        cfg = WriterConfig(min_peaks=min(10, args.peaks), images=images_kept or "hits")
        stage = WriterStage(cfg, out, 0, "bench")
        seq = iter(range(1 << 30))

        def one() -> None:
            record = Batch.describe(images, meta, "bench", next(seq))
            stage.process(Result(record, "mask", masks.shape, "|u1", "bench"), images, masks)

        one()  # file creation and first-chunk set-up: once per file, not per frame
        busy0, events0 = stage.busy_s, stage.stats()["events"]
        timing = timed(one, args.repeats, b, warm=False)
        stats = stage.stats()
        assert stats["hits"] == stats["events"], "every frame must be a hit"
        busy_ms = (stage.busy_s - busy0) * 1e3 / (stats["events"] - events0)
        found = stats["peaks_found"] / stats["events"]
        stage.close()
        shutil.rmtree(out)
        return timing, busy_ms, found

    def peaks() -> None:
        for i in range(b):
            find_peaks(images[i], masks[i])

    def nonzero() -> None:
        for i in range(b):
            np.flatnonzero(masks[i])

    frames = images.reshape(b, -1, images.shape[-1])
    opts = compression_options("bitshuffle_lz4", None)

    def compress_alone() -> None:
        with h5py.File("mem.h5", "w", driver="core", backing_store=False) as f:
            f.create_dataset("c", data=frames, chunks=(1, *frames.shape[1:]), **opts)

    import hdf5plugin  # noqa: F401 - registers the bitshuffle filter with h5py

    out = {
        "peaks": timed(peaks, args.repeats, b),
        "peaks_floor": timed(nonzero, args.repeats, b),
        "compress_floor": timed(compress_alone, args.repeats, b),
    }
    tables, _, _ = process_per_frame("none")
    default, busy_ms, found = process_per_frame(None)
    # Differences of two runs: CPU only (their wall-clock rate means nothing on its own).
    out["writing"] = {"cpu_ms": tables["cpu_ms"] - out["peaks"]["cpu_ms"], "wall_ms": None}
    out["compress"] = {"cpu_ms": default["cpu_ms"] - tables["cpu_ms"], "wall_ms": None}
    out["busy"] = default
    out["busy_s_ms_per_hit"] = busy_ms
    out["peaks_found_per_frame"] = found
    return out


# -- report ------------------------------------------------------------------------------------
ROWS = [  # (stage, part, floor key)
    ("ingest", "receive", "floor"),
    ("ingest", "decode", "floor"),
    ("ingest", "put", "floor"),
    ("inference", "staging", "floor"),
    ("inference", "padding", "floor"),
    ("inference", "output", "floor"),
    ("inference", "model", "floor"),
    ("writer", "peaks", "peaks_floor"),
    ("writer", "writing", None),
    ("writer", "compress", "compress_floor"),
    ("writer", "busy", None),
]


def summarise(name: str, shape, stages: dict[str, dict]) -> dict:
    """Print one detector's table; returns its JSON part (CPU ms, frames/s, x floor)."""
    print(f"\n{name}: frames {shape[0]}x{shape[1]}x{shape[2]} float32 (median per frame)")
    header = f"{'stage':<10}{'part':<10}{'CPU ms':>9}{'frames/s':>10}{'floor ms':>10}{'x floor':>9}"
    print(header + "\n" + "-" * len(header))
    doc: dict[str, dict] = {}
    for stage, part, floor_key in ROWS:
        m = stages[stage][part]
        floor = stages[stage][floor_key]["cpu_ms"] if floor_key else None
        rate = 1e3 / m["wall_ms"] if m["wall_ms"] else None
        ratio = m["cpu_ms"] / floor if floor else None
        print(
            f"{stage:<10}{part:<10}{m['cpu_ms']:9.2f}"
            + (f"{rate:10.1f}" if rate else f"{'-':>10}")
            + (f"{floor:10.2f}{ratio:9.2f}" if floor else "")
        )
        doc.setdefault(stage, {})[part] = {
            "cpu_ms": round(m["cpu_ms"], 3),
            "frames_per_s": round(rate, 1) if rate else None,
            **({"floor_cpu_ms": round(floor, 3), "x_floor": round(ratio, 2)} if floor else {}),
        }
    ingest = stages["ingest"]
    total = {
        "ingest": sum(ingest[p]["cpu_ms"] for p in ("receive", "decode", "put")),
        "inference": sum(stages["inference"][p]["cpu_ms"] for p in ("staging", "output")),
        "writer": stages["writer"]["busy"]["cpu_ms"],
    }
    doc["ingest"]["x_floor"] = round(total["ingest"] / ingest["floor"]["cpu_ms"], 2)
    doc["cpu_ms_per_frame"] = {k: round(v, 2) for k, v in total.items()}
    doc["cpu_ms_per_frame"]["all"] = round(sum(total.values()), 2)
    doc["writer_busy_ms_per_hit"] = round(stages["writer"]["busy_s_ms_per_hit"], 2)
    doc["peaks_found_per_frame"] = stages["writer"]["peaks_found_per_frame"]
    cores = sum(total.values()) * 120 / 1e3
    print(
        f"CPU ms a frame outside the model: ingest {total['ingest']:.1f} (receive+decode+put), "
        f"inference {total['inference']:.1f} (staging+output), writer {total['writer']:.1f} "
        f"(busy a hit, {doc['peaks_found_per_frame']:.0f} peaks); at 120 Hz: {cores:.2f} cores"
    )
    doc["cores_at_120_hz"] = round(cores, 2)
    return doc


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 1 repeat, no Ray")
    ap.add_argument("--detectors", nargs="+", choices=sorted(DETECTORS), default=list(DETECTORS))
    ap.add_argument("--batch", type=int, default=8, help="frames per message and batch")
    ap.add_argument("--messages", type=int, default=8, help="messages received per detector")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--peaks", type=int, default=30, help="peaks per frame")
    ap.add_argument("--threshold", type=float, default=50.0, help="the oracle's threshold")
    ap.add_argument("--no-ray", action="store_true", help="put: a numpy copy, not ray.put")
    ap.add_argument("--tmpdir", default=None, help="where files are written (and removed)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.messages, args.repeats, args.peaks, args.no_ray = 2, 3, 1, 3, True
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    shapes = QUICK if args.quick else {k: DETECTORS[k] for k in args.detectors}
    if not args.no_ray:
        import ray

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, namespace="det-bench")
    tmp = tempfile.mkdtemp(prefix="detector-bench-", dir=args.tmpdir)
    doc: dict = {"bench": "detector", "batch": args.batch, "peaks_per_frame": args.peaks}
    try:
        for name, shape in shapes.items():
            images = make_batch(shape, args.batch, args.peaks)
            infer, masks = bench_inference(args, images)
            stages = {
                "ingest": bench_ingest(args, shape, args.batch, args.messages),
                "inference": infer,
                "writer": bench_writer(args, images, masks, tmp),
            }
            doc[name] = {"shape": list(shape), **summarise(name, shape, stages)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.no_ray:
            ray.shutdown()
    print(
        "\nx floor: CPU ms over the floor's CPU ms in the same run. Floors: ingest receive+decode"
        " of the same messages; inference a memcpy of the frame; writer peaks np.flatnonzero "
        "of the mask, compress the frame alone through the same filter (in memory). put is ray.put"
        + (" (a numpy copy: --no-ray)" if args.no_ray else "")
    )
    doc["put"] = "numpy copy" if args.no_ray else "ray.put"
    doc["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
