"""Live CrystFEL feed benchmark: does writer.live_feed slow the writer?

The feed's whole cost to the pipeline is in the writer's hit path (writer/feed.py FeedOffers:
a demand check per Result, and, while someone reads, a frame copy, MsgPack packing and a
fire-and-forget actor call per offered hit). This measures `WriterStage.process` events/s
(peak finding + CXI writing, every event a hit, frames written uncompressed: the cheapest
writer, so the feed's share is largest) in three modes, rounds interleaved, medians:

- off: writer.live_feed disabled (the anchor);
- idle: the feed actor running, no client connected;
- greedy: a client in another process asking for frames as fast as it can, decoding each
  with msgpack (what indexamajig's workers do before indexing).

Each round of `on` modes gets a fresh feed actor (a greedy round's demand would otherwise
linger DEMAND_S into the next). The greedy mode's served/skipped counts are reported too.
Run: .venv/bin/python bench/live_feed_bench.py   (a minute or so on 2 cores)
The last line printed is one JSON object {"bench": "live_feed", ...}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import tempfile
import time

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.writer import WriterStage
from peaknet_pipeline.writer.feed import FeedOffers, start_live_feed, stop_live_feed
from writer_bench import make_frames, make_results

MODES = ("off", "idle", "greedy")


def greedy_client(address: str, stop, counts) -> None:
    """An indexamajig worker with no indexing to do: request, receive, decode, again."""
    import msgpack
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    waiting = False
    while not stop.is_set():
        if not waiting:
            sock.send(b"next")
            waiting = True
        if sock.poll(100):
            msgpack.unpackb(sock.recv())
            waiting = False
            counts.value += 1
    sock.close(linger=0)
    ctx.term()


def one_round(mode: str, results, cfg: PipelineConfig, tmp: str, tag: str) -> tuple[float, dict]:
    out = tempfile.mkdtemp(dir=tmp)
    stage = WriterStage(cfg.writer, out, 0, "bench")
    feed = client = stop = None
    counts = mp.Value("l", 0)
    if mode != "off":
        feed = start_live_feed(cfg, tag)
        stage.feed = FeedOffers(cfg.writer, out, tag)
    if mode == "greedy":
        import ray

        stop = mp.Event()
        address = ray.get(feed.address.remote())
        client = mp.Process(target=greedy_client, args=(address, stop, counts), daemon=True)
        client.start()
        deadline = time.monotonic() + 30
        while not ray.get(feed.stats.remote())["requests"]:  # connected and asking
            assert time.monotonic() < deadline, "the greedy client never asked"
            time.sleep(0.05)
    t0 = time.perf_counter()
    for result, imgs, msk in results:
        stage.process(result, imgs, msk)
    stage.close()
    rate = stage.summary()["events"] / (time.perf_counter() - t0)
    if stop is not None:
        stop.set()
        client.join(timeout=10)
    final = stop_live_feed(feed) or {}
    shutil.rmtree(out)
    return rate, {"served": final.get("served", 0), "skipped": final.get("skipped", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="frame side, pixels (one panel)")
    ap.add_argument("--peaks", type=int, default=30, help="peaks per frame")
    ap.add_argument("--events", type=int, default=400, help="events per round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    images, masks = make_frames(32, args.size, args.peaks)
    results = make_results(images, masks, args.batch, args.events)
    cfg = PipelineConfig.model_validate(
        {
            "writer": {
                "min_peaks": 0,
                "images": "hits",
                "compression": "none",
                "live_feed": {"enabled": True, "bind": "tcp://127.0.0.1:0", "buffer": 16},
            },
            "monitor": {"metrics": False},
        }
    )
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    counts = {}
    tmp = tempfile.mkdtemp()
    try:
        for r in range(args.repeats):
            for mode in MODES:
                rate, c = one_round(mode, results, cfg, tmp, f"bench-{r}-{mode}")
                rates[mode].append(rate)
                if mode == "greedy":
                    counts = c
                print(f"round {r} {mode:6s} {rate:8.1f} events/s {c}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()
    med = {m: statistics.median(v) for m, v in rates.items()}
    doc = {
        "bench": "live_feed",
        "frame": [1, args.size, args.size],
        "events_per_round": args.events,
        "repeats": args.repeats,
        "events_per_s": {m: round(v, 1) for m, v in med.items()},
        "idle_over_off": round(med["idle"] / med["off"], 3),
        "greedy_over_off": round(med["greedy"] / med["off"], 3),
        "greedy_last_round": counts,
        "spread_off": [round(min(rates["off"]), 1), round(max(rates["off"]), 1)],
    }
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
