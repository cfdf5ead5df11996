"""Elastic inference pool: how fast a scale-up helps, and what a scale-down costs, in one run.

A rate-limited random source sends more frames than one inference actor can take (about
--load times one actor's rate, measured first in the same run), so the pool needs two:

1. anchor: one actor, Q1 full, steady state: its rate is the run's steady rate r1 (the
   anchor everything is compared with) and its batch interval.
2. scale-up 1 -> 2: the time from the request until the new actor's first result, in seconds
   and in batches the running actor produced meanwhile; then the steady rate with two actors.
3. scale-down 2 -> 1: the lowest windowed rate from the request until the retired actor is
   gone, against r1 (the rate one actor keeps afterwards): 1.0 means retiring cost nothing
   beyond losing the actor; the frames the retiring actor finished after the request.

The pipeline's own classes drive the run (Pipeline, its pool and its stats), as the driver
does, so the bench can sample every actor each --window-s. Every accepted frame must be
accounted for at the end, or the bench fails. Last line: one JSON object {"bench": "scale"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

PRESETS = {
    "demo": dict(
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 2, 1],
        bifpn_num_blocks=1,
        bifpn_num_features=32,
        seg_out_channels=32,
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frame", type=int, nargs=3, default=[1, 256, 256], metavar=("C", "H", "W"))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--load", type=float, default=1.6, help="source rate / one actor's rate")
    p.add_argument("--phase-s", type=float, default=12.0, help="steady time per phase")
    p.add_argument("--window-s", type=float, default=1.0, help="rate sampling window")
    p.add_argument("--timeout-s", type=float, default=300.0, help="longest wait for a change")
    return p.parse_args(argv)


def config(args: argparse.Namespace, run_id: str, out: Path, rate_hz: float):
    from peaknet_pipeline.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "ray": {"num_cpus": 4},
            "source": {
                "random": {
                    "frame_shape": list(args.frame),
                    "batch_size": args.batch_size,
                    "num_frames": 0,
                    "rate_hz": rate_hz,
                }
            },
            "queue": {"q1": {"capacity_items": 8}, "q2": {"capacity_items": 8}},
            "model": {"kind": "peaknet", **PRESETS["demo"]},
            "inference": {"num_actors": 1, "max_actors": 2, "torch_threads": 1},
            "writer": {"output_dir": str(out / "{run_id}"), "images": "none", "min_peaks": 0},
            "monitor": {"console": False},
            "runtime": {"run_id": run_id, "log_level": "WARNING"},
        }
    )


class Sampler:
    """Frames out per inference actor, sampled from their stats, and rates over windows."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline
        self.samples: list[tuple[float, dict[str, int]]] = []

    def sample(self) -> dict[str, int]:
        self.pipeline.sample()  # refreshes every running actor's last stats
        counts = {
            a.actor_id: int(a.counts.get("frames_out", 0)) for a in self.pipeline.of("inference")
        }
        self.samples.append((time.monotonic(), counts))
        return counts

    def rate(self, since: float, until: float | None = None) -> float:
        """Frames/s of the whole pool between two sample times."""
        window = [s for s in self.samples if s[0] >= since and (until is None or s[0] <= until)]
        if len(window) < 2:
            return 0.0
        (t0, c0), (t1, c1) = window[0], window[-1]
        return (sum(c1.values()) - sum(c0.values())) / (t1 - t0)

    def windows(self, since: float, until: float, width: float) -> list[float]:
        rates, t = [], since
        while t + width <= until + 1e-9:
            rates.append(self.rate(t, t + width))
            t += width
        return rates


def run_for(pipeline, sampler: Sampler, seconds: float, window_s: float, until=None) -> None:
    """Keep the pipeline's watch loop going (as the driver does), sampling every window."""
    deadline = time.monotonic() + seconds
    next_sample = time.monotonic()
    while time.monotonic() < deadline:
        pipeline.wait(timeout_s=0.05)
        if time.monotonic() >= next_sample:
            counts = sampler.sample()
            next_sample += window_s / 4
            if until is not None and until(counts):
                return
    sampler.sample()


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from peaknet_pipeline.stages import Pipeline

    run_id = f"scale-{uuid.uuid4().hex[:6]}"
    out = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    # Phase 0: the source far faster than anything, to find one actor's rate.
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        probe = Pipeline(config(args, run_id + "-probe", out, rate_hz=0), run_id + "-probe", out)
        probe.start()
        sampler = Sampler(probe)
        run_for(probe, sampler, 4.0, args.window_s)  # warm-up
        t0 = time.monotonic()
        run_for(probe, sampler, args.phase_s, args.window_s)
        capacity = sampler.rate(t0)
        probe.stop_ingest("probe done")
        run_for(probe, sampler, args.timeout_s, args.window_s,
                until=lambda _: not any(a.running for a in probe.actors))  # fmt: skip
        probe.kill()  # finished actors still hold their CPUs until their processes end
        probe.destroy_queues()
        if capacity <= 0:
            print("scale bench: one actor produced nothing", file=sys.stderr)
            return 1
        rate_hz = args.load * capacity
        print(f"one actor: {capacity:.1f} frames/s; source at {rate_hz:.1f} frames/s", flush=True)

        pipe = Pipeline(config(args, run_id, out, rate_hz=rate_hz), run_id, out)
        pipe.start()
        sampler = Sampler(pipe)
        run_for(pipe, sampler, 4.0, args.window_s)  # warm-up, Q1 fills
        t0 = time.monotonic()
        run_for(pipe, sampler, args.phase_s, args.window_s)
        r1 = sampler.rate(t0)
        batch_interval = args.batch_size / r1

        requested = time.monotonic()
        pipe.pool.request(2, "scale bench")
        run_for(pipe, sampler, args.timeout_s, args.window_s,
                until=lambda c: c.get("inference-1", 0) > 0)  # fmt: skip
        first = next(t for t, c in sampler.samples if c.get("inference-1", 0) > 0)
        up_s = first - requested
        t2 = time.monotonic()
        run_for(pipe, sampler, args.phase_s, args.window_s)
        r2 = sampler.rate(t2)

        down = time.monotonic()
        before = sampler.samples[-1][1].get("inference-1", 0)
        pipe.pool.request(1, "scale bench")
        run_for(pipe, sampler, args.timeout_s, args.window_s,
                until=lambda _: not pipe.of("inference", running_only=True)[1:])  # fmt: skip
        retired = pipe.of("inference")[1]
        finished_after = int(retired.counts.get("frames_out", 0)) - before
        gone = time.monotonic()
        run_for(pipe, sampler, args.phase_s, args.window_s)
        r1_after = sampler.rate(gone)
        transition = sampler.windows(down, max(gone, down + args.window_s), args.window_s)
        dip = min(transition) / r1_after if transition and r1_after else 0.0

        pipe.stop_ingest("bench done")
        run_for(pipe, sampler, args.timeout_s, args.window_s,
                until=lambda _: not any(a.running for a in pipe.actors))  # fmt: skip
        from peaknet_pipeline.driver import outputs_summary
        from peaknet_pipeline.monitor.report import build_report

        outputs = outputs_summary(pipe.cfg, pipe, complete=True)
        report = build_report(pipe.cfg, pipe, time.time(), "bench done", outputs, False)
        pipe.close_control()
        pipe.destroy_queues()
    finally:
        ray.shutdown()

    accounted = report["accounting"]["accounted"] and not report["errors"]
    result = {
        "bench": "scale",
        "one_actor_frames_per_s": round(capacity, 2),
        "steady_1_actor_frames_per_s": round(r1, 2),
        "steady_2_actors_frames_per_s": round(r2, 2),
        "scale_up_to_first_result_s": round(up_s, 3),
        "scale_up_in_batches_at_steady_rate": round(up_s / batch_interval, 2),
        "scale_down_min_window_over_steady": round(dip, 3),
        "scale_down_frames_finished_by_retiring_actor": finished_after,
        "retire_s": round(gone - down, 3),
        "two_actors_over_one": round(r2 / r1, 3) if r1 else 0.0,
        "accounted": accounted,
    }
    print(
        f"scale-up: first result of the new actor {up_s:.2f} s after the request "
        f"({result['scale_up_in_batches_at_steady_rate']} batches at the steady rate); "
        f"two actors {r2:.1f} frames/s = {result['two_actors_over_one']}x one ({r1:.1f})"
    )
    print(
        f"scale-down: lowest {args.window_s:g} s window while retiring = "
        f"{result['scale_down_min_window_over_steady']} of one actor's steady rate; the retiring "
        f"actor finished {finished_after} frames after the request, gone after {gone - down:.2f} s"
    )
    print(json.dumps(result))
    return 0 if accounted else 1


if __name__ == "__main__":
    sys.exit(main())
