"""Writer-stage benchmark: peak finding + CXI writing, against a plain scipy loop.

Anchor (same run, same masks): a loop of `scipy.ndimage.label` + `ndimage.center_of_mass`
per event, no Ray, no file I/O. Measured against it:

- stage/none: `WriterStage.process` (the code each writer actor runs per Result) with
  images: none, writing real CXI peak lists to a temporary directory, one thread. No Ray and
  no Q2 in this path. Target: >= 0.8 x the anchor's events/s.
- actor/none: one writer actor (num_cpus_per_actor=1) draining a pre-filled Q2 on a local Ray,
  timed from run() to its return: Q2 gets, object-store fetches, peak finding and CXI writes.
- stage/hits/<compression>: images: hits (every event a hit), frames written with each
  compression option: events/s, frame MB/s (uncompressed frame data through the stage),
  disk MB/s (bytes written), MB on disk per event and size relative to no compression.
  lzf is an h5py-only filter that CrystFEL cannot read; bitshuffle_lz4 and zstd need the
  hdf5plugin filters on the reader's side.

Frames: 1920 x 1920 float32, Poisson background, ~50 Gaussian-like peaks marked in the mask.
Run: .venv/bin/python bench/writer_bench.py  (about a minute or two on 2 cores).
The last line printed is one JSON object {"bench": "writer", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from peaknet_pipeline.config import PipelineConfig, WriterConfig
from peaknet_pipeline.records import Batch, Result
from peaknet_pipeline.writer import WriterStage, start_writer_actors

COMPRESSIONS = ("none", "gzip", "lzf", "bitshuffle_lz4", "zstd")


def make_frames(n: int, size: int, peaks: int, seed: int = 0):
    """`n` distinct (1, size, size) frames and masks with `peaks` 3x3-ish peaks each."""
    rng = np.random.default_rng(seed)
    images = rng.poisson(2.0, size=(n, 1, size, size)).astype(np.float32)
    masks = np.zeros((n, 1, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[-2:3, -2:3]
    blob = 300.0 * np.exp(-(yy**2 + xx**2) / 2.0)
    for i in range(n):
        centres = rng.integers(4, size - 4, size=(peaks, 2))
        for r, c in centres:
            images[i, 0, r - 2 : r + 3, c - 2 : c + 3] += blob
            masks[i, 0, r - 1 : r + 2, c - 1 : c + 2] = 1
    return images, masks


def make_results(images, masks, batch: int, events: int, refs=None) -> list[tuple]:
    """(Result, images, masks) per batch of `batch` events, cycling over the frame pool.

    With `refs` (ObjectRefs per pool batch) the Results carry payload refs for a Q2.
    """
    out = []
    for seq in range(events // batch):
        start = (seq * batch) % len(images)
        imgs, msk = images[start : start + batch], masks[start : start + batch]
        meta = {
            "event_id": np.arange(seq * batch, (seq + 1) * batch),
            "timestamp": np.arange(batch, dtype=np.uint64) + (np.uint64(1) << np.uint64(40)),
            "wavelength_nm": np.full(batch, 0.13),
        }
        batch_rec = Batch.describe(imgs, meta, "bench", seq)
        result = Result(batch_rec, "mask", msk.shape, "|u1", "bench")
        if refs is not None:
            img_ref, mask_ref = refs[start // batch]
            result = Result(batch_rec.with_payload(img_ref), "mask", msk.shape, "|u1", "bench")
            result = result.with_payload(mask_ref)
        out.append((result, imgs, msk))
    return out


def dir_bytes(path: str) -> int:
    return sum(e.stat().st_size for e in os.scandir(path) if e.name.endswith(".cxi"))


def time_anchor(images, masks, events: int) -> float:
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(2, 2)
    t0 = time.perf_counter()
    for i in range(events):
        k = i % len(images)
        labels, n = ndimage.label(masks[k, 0], structure=structure)
        ndimage.center_of_mass(images[k, 0], labels, np.arange(1, n + 1))
    return events / (time.perf_counter() - t0)


def time_label_only(masks, events: int) -> float:
    """A floor on the work, not the anchor: labelling alone, with no per-peak numbers at all."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(2, 2)
    t0 = time.perf_counter()
    for i in range(events):
        ndimage.label(masks[i % len(masks), 0], structure=structure)
    return events / (time.perf_counter() - t0)


def time_stage(results, writer_cfg: WriterConfig, tmp: str):
    """(events/s, bytes written) of WriterStage over `results` into a fresh directory."""
    out = tempfile.mkdtemp(dir=tmp)
    stage = WriterStage(writer_cfg, out, 0, "bench")
    t0 = time.perf_counter()
    for result, imgs, msk in results:
        stage.process(result, imgs, msk)
    stage.close()  # includes the final flush, fsync and rename
    elapsed = time.perf_counter() - t0
    summary = stage.summary()
    assert summary["accounted"] and summary["events"] == sum(r.size for r, _, _ in results)
    size = dir_bytes(out)
    shutil.rmtree(out)
    return summary["events"] / elapsed, size


def time_actor(images, masks, batch: int, events: int, tmp: str, repeats: int) -> list[float]:
    """events/s of one writer actor draining a pre-filled Q2 (images: none), per repeat."""
    import ray

    from peaknet_pipeline.queue import ShardedQueue

    ray.init(num_cpus=2, include_dashboard=False, namespace="writer-bench", log_to_driver=False)
    try:
        refs = [
            (ray.put(images[i : i + batch]), ray.put(masks[i : i + batch]))
            for i in range(0, len(images), batch)
        ]
        cfg = PipelineConfig.model_validate(
            {"writer": {"images": "none", "num_cpus_per_actor": 1, "max_pending_batches": 4}}
        )
        rates = []
        for rep in range(repeats):
            q2 = ShardedQueue.create(f"q2-{rep}", num_shards=1, capacity_items=10_000)
            q2.register_producer("bench")
            q2.put_many([r for r, _, _ in make_results(images, masks, batch, events, refs)])
            q2.close_producer("bench")
            out = tempfile.mkdtemp(dir=tmp)
            [writer] = start_writer_actors(cfg, q2, out, "bench", [0])
            ray.get(writer.stats.remote())  # actor up and imports done before timing
            t0 = time.perf_counter()
            summary = ray.get(writer.run.remote())
            rates.append(summary["events"] / (time.perf_counter() - t0))
            assert summary["events"] == events and summary["accounted"]
            ray.kill(writer)
            q2.destroy()
            shutil.rmtree(out)
        return rates
    finally:
        ray.shutdown()


def print_table(rates: dict[str, list[float]], sizes: dict[str, float], frame_mb: float) -> dict:
    """Print medians and ratios to the anchor; returns them for the JSON line."""
    anchor = statistics.median(rates["anchor"])
    header = (
        f"{'measurement':<24}{'events/s':>10}{'x anchor':>10}{'frame MB/s':>12}"
        f"{'disk MB/s':>11}{'MB/event':>10}{'size':>7}"
    )
    print(header)
    print("-" * len(header))
    report = {}
    for name, values in rates.items():
        rate = statistics.median(values)
        comp = name.split("/")[-1] if name.startswith("stage/hits/") else None
        line = f"{name:<24}{rate:10.1f}{rate / anchor:10.2f}"
        report[name] = {"events_per_s": round(rate, 2), "x_anchor": round(rate / anchor, 3)}
        if comp:
            mb, size = sizes[comp] / 1e6, sizes[comp] / sizes["none"]
            line += f"{rate * frame_mb:12.1f}{rate * mb:11.1f}{mb:10.2f}{size:7.3f}"
            report[name].update(
                frame_mb_per_s=round(rate * frame_mb, 1),
                disk_mb_per_s=round(rate * mb, 1),
                bytes_per_event=int(sizes[comp]),
                size_vs_none=round(size, 3),
            )
        print(line)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1920, help="frame height = width (pixels)")
    ap.add_argument("--peaks", type=int, default=50, help="peaks per frame")
    ap.add_argument("--pool", type=int, default=8, help="distinct frames generated")
    ap.add_argument("--batch", type=int, default=8, help="events per Result")
    ap.add_argument("--anchor-events", type=int, default=16)
    ap.add_argument("--events", type=int, default=64, help="events per stage measurement")
    ap.add_argument("--image-events", type=int, default=16, help="events per compression run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-ray", action="store_true", help="skip the actor measurement")
    ap.add_argument("--tmpdir", default=None, help="where CXI files are written (and removed)")
    args = ap.parse_args()
    if args.events % args.batch or args.image_events % args.batch or args.pool % args.batch:
        ap.error("--events, --image-events and --pool must be multiples of --batch")

    images, masks = make_frames(args.pool, args.size, args.peaks)
    tmp = tempfile.mkdtemp(prefix="writer-bench-", dir=args.tmpdir)
    results = make_results(images, masks, args.batch, args.events)
    none_cfg = WriterConfig(images="none", min_peaks=10, events_per_file=1000)
    rates = {}
    try:
        rates["anchor"] = [
            time_anchor(images, masks, args.anchor_events) for _ in range(args.repeats)
        ]
        rates["label only"] = [
            time_label_only(masks, args.anchor_events) for _ in range(args.repeats)
        ]
        rates["stage/none"] = [time_stage(results, none_cfg, tmp)[0] for _ in range(args.repeats)]
        if not args.no_ray:
            rates["actor/none"] = time_actor(
                images, masks, args.batch, args.events, tmp, args.repeats
            )
        img_results = results[: args.image_events // args.batch]
        sizes = {}
        for comp in COMPRESSIONS:
            cfg = WriterConfig(images="hits", min_peaks=0, compression=comp, events_per_file=1000)
            runs = [time_stage(img_results, cfg, tmp) for _ in range(args.repeats)]
            rates[f"stage/hits/{comp}"] = [r for r, _ in runs]
            sizes[comp] = runs[0][1] / args.image_events
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"frames 1x{args.size}x{args.size} float32, ~{args.peaks} peaks/frame, batch "
        f"{args.batch}, median of {args.repeats} runs (shared 2-core machine: noisy)"
    )

    report = print_table(rates, sizes, images[0].nbytes / 1e6)
    ratio = report["stage/none"]["x_anchor"]
    print(
        "stage/*: WriterStage.process, no Ray/Q2 in the path; actor/*: one writer actor from a "
        "pre-filled Q2 (Q2 gets + object-store fetch + peaks + CXI), 1 CPU reserved.\n"
        "label only: ndimage.label alone, a floor on the work (center_of_mass in the anchor "
        "scans the whole image once per call, which makes the anchor slow)."
    )
    doc = {
        "bench": "writer",
        "frame": [1, args.size, args.size],
        "peaks_per_frame": args.peaks,
        "anchor": "scipy.ndimage.label + center_of_mass loop, no Ray, no I/O",
        "anchor_events_per_s": report["anchor"]["events_per_s"],
        "stage_none_ratio": ratio,
        "stage_none_vs_label_only": round(
            report["stage/none"]["events_per_s"] / report["label only"]["events_per_s"], 3
        ),
        "actor_none_ratio": report.get("actor/none", {}).get("x_anchor"),
        "target_ratio": 0.8,
        "target_met": ratio >= 0.8,
        "results": report,
    }
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
