"""Inference stage efficiency: the pipeline's frames/s against the bare model's, in one run.

(a) anchor: the bare engine in a plain loop (pre-staged input: normalise, forward, argmax,
    crop, to numpy), timed inside the inference actor itself between pipeline rounds: the same
    engine object, process, torch threads and environment. (A separate actor, or the driver,
    ran 15-20% slower or faster than the actor's own compute for reasons outside the code,
    which made the ratio meaningless.)
(b) the pipeline: Q1 pre-filled with a round of batches -> one inference actor -> Q2, drained
    by a consumer thread here; the rate is the median interval between consecutive results.

The machine is shared, and its load drifts over tens of seconds, so the run is interleaved:
bare segment, pipeline round, bare segment, pipeline round, ..., bare segment. Each round's
efficiency b / a uses the bare segments on either side of it; the headline is the median over
rounds. Also reported: latency from the first put to the first result, the actor's own compute
time per batch (so a slower compute is told apart from gaps between batches: actor compute /
result interval near 1 means nothing waits around the compute), its queue and staging times,
and Q1 depth over time (it runs dry only at the end of each round). Last line: one JSON
object {"bench": "inference", ...}.

Metrics on and off (`--metrics both`, the default): two actors, one with `monitor.metrics` on
(its recorder thread, per-batch times, and its queues' shards recording too) and one with it
off, each with its own queues; their rounds alternate (in turned order each round), and each
round's efficiency uses that actor's own bare segments. The cost of the metrics is
1 - efficiency(on) / efficiency(off), medians over rounds (target: at most 0.02), reported with
the per-round ratios and the spread of each side's efficiencies, which is the noise to read it
against. The idle actor's threads (metrics and polling) run during the other's rounds.

Fairness on a small machine: the actor's torch threads (and OMP_NUM_THREADS, set before torch
loads) equal the bare loop's. With fewer torch threads than cores, the prefetch thread and
Ray's own work run beside the compute (as they do next to a GPU); with threads == cores they
compete with it. Use --threads to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid

import numpy as np

PRESETS = {
    "default": {},  # the ModelConfig defaults: the "tiny" PeakNet, 33.16 M parameters
    "small": dict(
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        bifpn_num_blocks=1,
        bifpn_num_features=16,
        seg_out_channels=32,
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(PRESETS), default="default")
    p.add_argument("--frame", type=int, nargs=3, default=[1, 256, 256], metavar=("C", "H", "W"))
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="pipeline rounds between bare segments")
    p.add_argument("--batches", type=int, default=14, help="batches per pipeline round")
    p.add_argument("--bare-batches", type=int, default=6, help="timed batches per bare segment")
    p.add_argument("--threads", type=int, default=1, help="torch threads (bare and actor)")
    p.add_argument("--buffer-depth", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--output", choices=["mask", "logits"], default="mask")
    p.add_argument("--num-shards", type=int, default=2)
    p.add_argument("--sample-interval", type=float, default=0.5, help="Q1 depth sampling (s)")
    p.add_argument(
        "--metrics",
        choices=["both", "on", "off"],
        default="both",
        help="monitor.metrics of the actor and its queues; both: one actor each, rounds "
        "interleaved, and the cost of the metrics reported",
    )
    return p.parse_args(argv)


def make_config(args: argparse.Namespace, metrics: bool = True):
    from peaknet_pipeline.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "monitor": {"metrics": metrics},
            "source": {"random": {"batch_size": args.batch_size}},  # the warm-up batch size
            "model": PRESETS[args.model],
            "inference": {
                "device": "cpu",
                "num_cpus_per_actor": args.threads,
                "torch_threads": args.threads,
                "buffer_depth": args.buffer_depth,
                "precision": args.precision,
                "output": args.output,
                "frame_shape": list(args.frame),
                "pad_mode": "center",
            },
        }
    )


def frames(args: argparse.Namespace, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (args.batch_size, *args.frame)
    return [rng.poisson(10.0, size=shape).astype(np.float32) for _ in range(count)]


def bench_actor_class():
    """The inference actor plus the anchor: the same engine object, in the same process, with
    the same threads and environment, timed in a plain loop while the pipeline is idle."""
    from peaknet_pipeline.inference import InferenceActor

    class BenchInferenceActor(InferenceActor):
        def bare_loop(self, images: np.ndarray, n: int, warmup: int = 1) -> list[float]:
            """Per-batch seconds of exactly the compute the pipeline times: normalise, forward,
            argmax, crop, to numpy (the input is staged beforehand, as the prefetch does)."""
            from peaknet_pipeline.inference.geometry import geometry, output_array
            from peaknet_pipeline.inference.runners import Slot

            geo = geometry(images.shape, self.cfg.inference.pad_mode)
            slot = Slot(0)
            slot.stage(images, geo)
            times = []
            for i in range(warmup + n):
                x = slot.host_input().clone()  # compute normalises its input in place
                t0 = time.perf_counter()
                out = self.engine.compute(x, geo).numpy()
                output_array(out, geo, self.engine.output)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            return times

        def flush_seconds(self, n: int) -> float:
            """Median seconds of one metrics recording of this actor (what its recorder thread
            does once a second): read stats(), record every reading through Ray's metrics."""
            from peaknet_pipeline.monitor.metrics import Reading, Recorder, stage_readings

            labels = {"run": "bench", "stage": "inference", "actor": "flush"}
            batch = [Reading("peaknet_batch_seconds", {}, 0.1)] * 10  # ten batches a second

            def readings():
                return stage_readings("inference", self.stats()) + batch

            recorder, times = Recorder(labels, readings), []
            for _ in range(n):
                t0 = time.perf_counter()
                recorder.flush()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

    return BenchInferenceActor


class Consumer(threading.Thread):
    """Drains Q2 like a writer would (records only: the masks stay in the object store)."""

    def __init__(self, q2) -> None:
        super().__init__(daemon=True)
        self.q2 = q2
        self.arrivals: list[tuple[float, int, float]] = []  # (time, frames, actor compute_s)
        self.changed = threading.Condition()

    def run(self) -> None:
        from peaknet_pipeline.queue import EndOfStream

        while True:
            try:
                got = self.q2.get_many(16, timeout=600)
            except EndOfStream:
                return
            now = time.perf_counter()
            with self.changed:
                self.arrivals.extend((now, r.size, r.timings_s["compute_s"]) for r in got)
                self.changed.notify_all()

    def wait_for(self, total: int, timeout_s: float = 600) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.arrivals) >= total, timeout_s):
                raise TimeoutError(f"only {len(self.arrivals)} of {total} results arrived")


class DepthSampler(threading.Thread):
    """Q1 depth every `interval_s`, as (perf_counter time, depth)."""

    def __init__(self, q1, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.q1, self.interval_s = q1, interval_s
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.perf_counter(), self.q1.stats()["depth"]))
            self.done.wait(self.interval_s)


class Variant:
    """One inference actor with its own Q1, Q2, consumer and depth sampler, fed round by round;
    `metrics` switches the Ray metrics of the actor and of its queue shards (monitor.metrics)."""

    def __init__(self, label: str, cfg, args: argparse.Namespace, pool: list[np.ndarray]):
        self.label, self.cfg, self.args, self.pool = label, cfg, args, pool
        self.segments: list[list[float]] = []
        self.puts: list[float] = []

    def start(self) -> None:
        import ray

        from peaknet_pipeline.inference.launch import MAX_CONCURRENCY
        from peaknet_pipeline.placement import actor_options
        from peaknet_pipeline.queue import ShardedQueue

        args, name = self.args, f"bench-{uuid.uuid4().hex[:6]}"
        labels = {"run": name, "queue": "Q1"} if self.cfg.monitor.metrics else None
        self.q1 = ShardedQueue.create(
            f"{name}-q1", args.num_shards, capacity_items=args.batches + 1, metrics_labels=labels
        )
        labels = {"run": name, "queue": "Q2"} if self.cfg.monitor.metrics else None
        self.q2 = ShardedQueue.create(
            f"{name}-q2", args.num_shards, capacity_items=64, metrics_labels=labels
        )
        self.refs = [ray.put(images) for images in self.pool]
        t0 = time.perf_counter()
        options = actor_options("inference", num_cpus=self.cfg.inference.num_cpus_per_actor)
        self.actor = (
            ray.remote(bench_actor_class())
            .options(**options, max_concurrency=MAX_CONCURRENCY)
            .remote(self.cfg, self.q1, self.q2, 0)
        )
        ray.get(self.actor.ready.remote())
        self.start_s = time.perf_counter() - t0
        self.consumer = Consumer(self.q2)
        self.sampler = DepthSampler(self.q1, args.sample_interval)
        self.consumer.start()
        self.sampler.start()
        self.run_ref = self.actor.run.remote()
        self.q1.register_producer("bench")
        self.segments.append(self._bare())

    def _bare(self) -> list[float]:
        import ray

        return ray.get(self.actor.bare_loop.remote(self.pool[0], self.args.bare_batches))

    def round(self, r: int) -> None:
        """Q1 filled with a round of batches, drained by the actor; then a bare segment."""
        from peaknet_pipeline.records import Batch

        args, pool, refs = self.args, self.pool, self.refs
        meta = {"event_id": np.arange(args.batch_size)}
        records = [
            Batch.describe(pool[i % len(pool)], meta, "bench", i).with_payload(refs[i % len(refs)])
            for i in range(r * args.batches, (r + 1) * args.batches)
        ]
        self.puts.append(time.perf_counter())
        self.q1.put_many(records)
        self.consumer.wait_for((r + 1) * args.batches)
        self.segments.append(self._bare())

    def finish(self) -> dict:
        import ray

        flush_s = (
            ray.get(self.actor.flush_seconds.remote(200)) if self.cfg.monitor.metrics else None
        )
        self.q1.close_producer("bench")
        summary = ray.get(self.run_ref)
        self.consumer.join()
        self.sampler.done.set()
        self.sampler.join()
        ray.kill(self.actor)
        self.q1.destroy()
        self.q2.destroy()
        n, arrivals = self.args.batches, self.consumer.arrivals
        return {
            "actor_start_s": self.start_s,
            "puts": self.puts,
            "rounds": [arrivals[r * n : (r + 1) * n] for r in range(self.args.rounds)],
            "segments": self.segments,
            "depth": self.sampler.samples,
            "summary": summary,
            "flush_s": flush_s,
        }


def interleaved_runs(variants: list[Variant], rounds: int) -> list[dict]:
    """Every variant's rounds, alternating between variants (in turned order each round, so
    a drifting load favours none of them)."""
    for variant in variants:
        variant.start()
    for r in range(rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            variant.round(r)
    return [variant.finish() for variant in variants]


def analyse(args: argparse.Namespace, run: dict) -> tuple[dict, list[tuple[str, str]]]:
    b, segs = args.batch_size, run["segments"]
    per_round = []
    for r, arrivals in enumerate(run["rounds"]):
        bare_med = statistics.median(segs[r] + segs[r + 1])
        interval = float(np.median(np.diff([t for t, _, _ in arrivals])))
        compute = statistics.median(c for _, _, c in arrivals)
        per_round.append((bare_med, interval, compute))
    eff = [bare / interval for bare, interval, _ in per_round]
    bare_all = statistics.median(t for seg in segs for t in seg)
    interval_all = float(np.median([x for a in run["rounds"] for x in np.diff([t for t, *_ in a])]))
    compute_all = statistics.median(c for a in run["rounds"] for _, _, c in a)
    t0, s = run["puts"][0], run["summary"]
    depth = [(round(t - t0, 1), d) for t, d in run["depth"] if t >= t0]
    step = max(1, len(depth) // 30)
    result = {
        "bench": "inference",
        "model": args.model,
        "frame": list(args.frame),
        "batch_size": b,
        "rounds": args.rounds,
        "batches_per_round": args.batches,
        "threads": args.threads,
        "buffer_depth": args.buffer_depth,
        "precision": args.precision,
        "efficiency": statistics.median(eff),
        "efficiency_per_round": eff,
        "efficiency_pooled": bare_all / interval_all,
        "bare_fps": b / bare_all,
        "pipeline_fps": b / interval_all,
        "bare_batch_s": bare_all,
        "pipeline_interval_s": interval_all,
        "actor_compute_s": compute_all,
        "compute_slowdown": compute_all / bare_all,
        "gap_efficiency": compute_all / interval_all,
        "latency_first_result_s": run["rounds"][0][0][0] - t0,
        "actor_start_s": run["actor_start_s"],
        "actor_q2_blocked_s": s["q2_blocked_s"],
        "actor_fetch_s": s["fetch_s"],
        "actor_stage_s": s["stage_s"],
        "frames_out": s["frames_out"],
        "metrics_flush_s": run.get("flush_s"),
        "rejected": s["rejected"],
        "q1_depth_samples": [list(x) for x in depth[::step]],
    }
    rows = [
        ("model / frame / batch", f"{args.model} / {tuple(args.frame)} / {b}"),
        ("torch threads (bare and actor)", f"{args.threads} (machine: {os.cpu_count()} cores)"),
        (
            "rounds x batches (bare segments)",
            f"{args.rounds} x {args.batches} ({len(segs)} x {args.bare_batches})",
        ),
    ]
    for r, ((bare, interval, compute), e) in enumerate(zip(per_round, eff)):
        rows.append(
            (
                f"round {r}: bare / interval / actor compute",
                f"{bare * 1e3:.0f} / {interval * 1e3:.0f} / {compute * 1e3:.0f} ms  "
                f"efficiency {e:.3f}",
            )
        )
    rows += [
        ("(a) bare frames/s (median, all segments)", f"{result['bare_fps']:.3f}"),
        ("(b) pipeline frames/s (median interval)", f"{result['pipeline_fps']:.3f}"),
        (
            "efficiency b / a (median of rounds; pooled)",
            f"{result['efficiency']:.3f}  ({result['efficiency_pooled']:.3f})",
        ),
        ("actor compute / bare batch time", f"{result['compute_slowdown']:.3f}"),
        ("actor compute / result interval (gaps)", f"{result['gap_efficiency']:.3f}"),
        ("latency first put -> first result", f"{result['latency_first_result_s']:.3f} s"),
        ("actor start (imports, build, warm-up)", f"{run['actor_start_s']:.1f} s"),
        (
            "actor q2 blocked / fetch / stage (total)",
            f"{s['q2_blocked_s']:.2f} / {s['fetch_s']:.2f} / {s['stage_s']:.2f} s",
        ),
        ("frames out / rejected", f"{s['frames_out']} / {s['rejected']}"),
        ("Q1 depth after first put (t s: depth)", " ".join(f"{t}:{d}" for t, d in depth[::step])),
    ]
    return result, rows


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    pool = frames(args, 4)
    switches = {"on": [True], "off": [False], "both": [False, True]}[args.metrics]
    ray.init(num_cpus=max(4, 2 * args.threads + 1), include_dashboard=False, log_to_driver=False)
    try:
        variants = [
            Variant(f"metrics {'on' if on else 'off'}", make_config(args, on), args, pool)
            for on in switches
        ]
        runs = interleaved_runs(variants, args.rounds)
    finally:
        ray.shutdown()
    results = {}
    for variant, run in zip(variants, runs):
        result, rows = analyse(args, run)
        results[variant.label] = result
        width = max(len(k) for k, _ in rows)
        print(f"inference bench, {variant.label} (CPU; shared machine: numbers are noisy)")
        for key, value in rows:
            print(f"  {key:<{width}}  {value}")
    summary = {"bench": "inference", **next(iter(results.values()))}
    if len(results) == 2:
        summary["metrics"] = metrics_cost(results["metrics off"], results["metrics on"])
        print("metrics overhead (monitor.metrics on vs off, rounds interleaved)")
        for key, value in summary["metrics"].items():
            print(f"  {key:<40}  {value}")
        summary["metrics_on"] = results["metrics on"]
    print(json.dumps(summary))
    return 0


def metrics_cost(off: dict, on: dict) -> dict:
    """What turning the metrics on costs: efficiency and throughput, on against off (> 0: on
    is slower), with the spread of the per-round efficiencies as a measure of the noise."""
    from peaknet_pipeline.monitor.metrics import INTERVAL_S

    per_round = [b / a for a, b in zip(off["efficiency_per_round"], on["efficiency_per_round"])]
    flush = on["metrics_flush_s"]
    return {
        # What the actor's recorder thread takes each second (metrics.INTERVAL_S), in share
        # of one core: measured directly, free of the rounds' noise.
        "recorder_flush_ms": round(flush * 1e3, 3),
        "recorder_core_share": round(flush / INTERVAL_S, 5),
        "efficiency_off_median": round(off["efficiency"], 4),
        "efficiency_on_median": round(on["efficiency"], 4),
        "cost_of_efficiency": round(1 - on["efficiency"] / off["efficiency"], 4),
        "cost_of_pipeline_fps": round(1 - on["pipeline_fps"] / off["pipeline_fps"], 4),
        "on_over_off_per_round": [round(x, 4) for x in per_round],
        "efficiency_spread_off": round(
            max(off["efficiency_per_round"]) - min(off["efficiency_per_round"]), 4
        ),
        "efficiency_spread_on": round(
            max(on["efficiency_per_round"]) - min(on["efficiency_per_round"]), 4
        ),
        "target": "cost_of_efficiency <= 0.02",
    }


if __name__ == "__main__":
    sys.exit(main())
