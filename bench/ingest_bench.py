"""Ingest benchmark: pusher -> socket source actor -> Q1, against a plain receive-and-decode loop.

For each transport (zmq, nng), alternating, --repeats times:
(a) anchor: the same pusher subprocess sends to a socket opened here with the source's own
    transport code (sources.transport.open_pull) and decoded with the source's own Decoder,
    in a plain loop: no Ray, no thread, no queue. Uncompressed float32 frames decode in place
    (a view of the received message), so this loop copies no pixels at all.
(ref) the same loop plus ray.put of each batch: the one copy into the object store that any
    Ray ingest must make. source / ref shows the cost of the actor and queue machinery.
(b) source: one SocketSource actor -> Q1 (a ShardedQueue), drained here by a consumer thread.
    The consumer takes records only; with --fetch it also maps each batch's pixels
    (ray.get, zero-copy from the local object store).
Then (c) two streams at once: two source actors, one pusher with two addresses (zmq).

The pusher re-sends two pre-encoded messages (--pool 2), so encoding does not limit the sender.
Rates are steady-state: frames after the first message over the time from the first to the
last arrival. ratio = source / anchor (medians). Target: ratio >= 0.85 per stream.
Last line: one JSON object {"bench": "ingest", ...}.

Every wait is bounded by a timeout derived from the work (bytes to move at a conservative
SLOW_BYTES_PER_S, plus a fixed allowance for start-up), so a slow machine fails with a message
saying what did not finish instead of hanging. Each source stream ends at its expected frame
count (source.socket.max_frames), not on an idle timeout: with 183 MB messages a fixed 2 s idle
timeout ended a stream whenever the sender stalled that long on a loaded machine, and the pusher
then blocked in send with nobody left to receive.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid

# Conservative transfer rate: this shared 2-core machine moves 0.7-1.2 GB/s through either
# transport; timeouts assume 50 MB/s, so only a stuck run reaches them.
SLOW_BYTES_PER_S = 50e6
START_S = 60.0  # start-up allowance: interpreter, imports, pre-encoding the pusher's messages
GAP_S = 10.0  # allowance on top of one message's transfer between two messages


def work_timeout_s(
    nbytes: float, fixed_s: float = START_S, rate: float = SLOW_BYTES_PER_S
) -> float:
    """Longest reasonable time to move `nbytes`: a fixed allowance plus the bytes at `rate`."""
    return fixed_s + nbytes / rate


def message_bytes(args) -> int:
    """Pixel bytes of one message (float32; the HDF5 framing adds a few kB)."""
    return args.batch_size * args.shape[0] * args.shape[1] * 4


def run_timeout_s(args, streams: int = 1) -> float:
    """Bound on one run: every message of every stream at the conservative rate."""
    return work_timeout_s(streams * args.messages * message_bytes(args))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=int, nargs=2, default=[1691, 1691], metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--messages", type=int, default=10, help="messages per stream per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--transports", nargs="+", default=["zmq", "nng"], choices=["zmq", "nng"])
    p.add_argument("--fetch", action="store_true", help="consumer also maps the pixels")
    p.add_argument("--no-two-streams", action="store_true")
    return p.parse_args(argv)


def start_pusher(args, addresses: list[str], transport: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "peaknet_pipeline.sources.push",
        "--json",
        "--transport",
        transport,
        "--batch-size",
        str(args.batch_size),
        "--num-frames",
        str(args.messages * args.batch_size),
        "--shape",
        *map(str, args.shape),
        "--pool",
        "2",
        "--peaks-per-frame",
        "20",
        "--linger-s",
        f"{run_timeout_s(args, len(addresses)):.0f}",
    ]
    for address in addresses:
        cmd += ["--address", address]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_pusher(pusher: subprocess.Popen, timeout_s: float) -> dict:
    """The pusher's summary; a clear error (with its last stderr lines) if it fails or is
    still running after timeout_s."""
    try:
        out, err = pusher.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pusher.kill()
        _, err = pusher.communicate()
        raise RuntimeError(
            f"pusher still running after {timeout_s:.0f} s (bound: {START_S:.0f} s + its bytes "
            f"at {SLOW_BYTES_PER_S / 1e6:.0f} MB/s); its last lines:\n{_tail(err)}"
        ) from None
    if pusher.returncode != 0:
        raise RuntimeError(f"pusher failed (exit {pusher.returncode}):\n{_tail(err)}")
    return json.loads(out.strip().splitlines()[-1])


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def steady_rate(arrivals: list[tuple[float, int, int]]) -> tuple[float, float]:
    """(frames/s, GB/s) from (time, frames, bytes) arrivals, excluding the first one."""
    arrivals = sorted(arrivals)
    span = arrivals[-1][0] - arrivals[0][0]
    frames = sum(a[1] for a in arrivals[1:])
    nbytes = sum(a[2] for a in arrivals[1:])
    return frames / span, nbytes / span / 1e9


def run_anchor(args, transport: str, store: bool = False) -> tuple[float, float, dict]:
    """The plain loop; with `store`, each batch is also ray.put here (one object-store copy,
    no actor, no queue): the reference row that separates the copy from the machinery."""
    import ray

    from peaknet_pipeline.config import SocketSourceConfig
    from peaknet_pipeline.sources.transport import open_pull
    from peaknet_pipeline.sources.wire import Decoder

    cfg = SocketSourceConfig(transport=transport)
    decode = Decoder(cfg)
    sock = open_pull(transport, "tcp://127.0.0.1:0", "bind", cfg.recv_hwm)
    pusher = start_pusher(args, [sock.endpoint], transport)
    arrivals = []
    timeout_s = run_timeout_s(args)
    deadline = time.monotonic() + timeout_s
    try:
        while len(arrivals) < args.messages:
            got = sock.recv()
            if got is None:
                if pusher.poll() not in (None, 0):
                    raise RuntimeError(f"pusher failed:\n{_tail(pusher.stderr.read())}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"anchor ({transport}): {len(arrivals)} of {args.messages} messages "
                        f"after {timeout_s:.0f} s"
                    )
                continue
            images, _ = decode(got[1])
            got = None
            if store:
                ray.put(images)  # stored, then freed as the ref is dropped
            arrivals.append((time.perf_counter(), images.shape[0], images.nbytes))
        sent = finish_pusher(pusher, max(deadline - time.monotonic(), GAP_S))
    finally:
        pusher.kill()
        sock.close()
    return *steady_rate(arrivals), sent


def run_source(args, transport: str, streams: int = 1) -> tuple[float, float, dict, list[dict]]:
    import ray

    from peaknet_pipeline.config import PipelineConfig
    from peaknet_pipeline.queue import EndOfStream, ShardedQueue
    from peaknet_pipeline.sources.socket import SocketSource

    cfg = PipelineConfig.model_validate(
        {
            "source": {
                "kind": "socket",
                "socket": {
                    "transport": transport,
                    "addresses": ["tcp://127.0.0.1:0"] * streams,
                    "max_frames": args.messages * args.batch_size,  # the stream's end
                    # guards only: a sender that stalls or never comes ends the stream
                    "idle_timeout_s": work_timeout_s(message_bytes(args), GAP_S),
                    "start_timeout_s": run_timeout_s(args, streams),
                },
            }
        }
    )
    q1 = ShardedQueue.create(
        f"ingest-{uuid.uuid4().hex[:8]}",
        num_shards=streams,
        capacity_items=cfg.queue.q1.capacity_items,
    )
    actor_cls = ray.remote(SocketSource).options(max_concurrency=4, num_cpus=0.5)
    actors = [actor_cls.remote(f"socket-{i}", q1, cfg, i) for i in range(streams)]
    for i in range(streams):
        q1.register_producer(f"socket-{i}")
    runs = [a.run.remote() for a in actors]
    timeout_s = run_timeout_s(args, streams)
    endpoints = ray.get([a.endpoint.remote() for a in actors], timeout=START_S)
    arrivals: list[tuple[float, int, int]] = []
    consumer_errors: list[BaseException] = []

    def consume() -> None:
        try:
            while True:
                for batch in q1.get_many(8, timeout=timeout_s):
                    if args.fetch:
                        pixels = ray.get(batch.images)
                        float(pixels[0, 0, 0, 0])
                    arrivals.append((time.perf_counter(), batch.size, batch.nbytes))
        except EndOfStream:
            pass
        except BaseException as exc:  # reported by the main thread
            consumer_errors.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    pusher = start_pusher(args, endpoints, transport)
    deadline = time.monotonic() + timeout_s
    try:
        _wait_for_pusher(pusher, runs, args.messages * args.batch_size, deadline)
        sent = finish_pusher(pusher, max(deadline - time.monotonic(), GAP_S))
        summaries = ray.get(runs, timeout=max(deadline - time.monotonic(), GAP_S))
        short = [s for s in summaries if s["frames"] != args.messages * args.batch_size]
        if short:
            raise RuntimeError(f"source streams ended short: {short}")
        consumer.join(timeout=max(deadline - time.monotonic(), GAP_S))
        if consumer.is_alive() or consumer_errors:
            raise RuntimeError(f"Q1 consumer did not finish: {consumer_errors or 'still running'}")
    finally:
        pusher.kill()
        for actor in actors:
            ray.kill(actor)
        q1.destroy()
    return *steady_rate(arrivals), sent, summaries


def _wait_for_pusher(pusher: subprocess.Popen, runs: list, frames: int, deadline: float) -> None:
    """Wait for the pusher to exit, failing at once if a source stream ends short: its pusher
    would then wait for a receiver that is gone."""
    import ray

    while pusher.poll() is None and time.monotonic() < deadline:
        if not runs:  # every stream is complete; the pusher is finishing
            time.sleep(0.2)
            continue
        ended, _ = ray.wait(runs, num_returns=1, timeout=1.0)
        for summary in ray.get(ended):
            if summary["frames"] < frames:
                raise RuntimeError(
                    f"source {summary['id']} ended after {summary['frames']} of {frames} "
                    f"frames: {summary['ended_by']}"
                )
        runs = [r for r in runs if r not in ended]


def measure(args, transport: str) -> tuple[list[tuple], dict]:
    """Anchor and source alternately, --repeats times: table rows and JSON fields."""
    anchor, stored, source, ratios, sender, per_msg = [], [], [], [], [], []
    for _ in range(args.repeats):
        a_fps, a_gbs, sent = run_anchor(args, transport)
        stored.append(run_anchor(args, transport, store=True)[:2])
        s_fps, s_gbs, sent_s, summaries = run_source(args, transport)
        anchor.append((a_fps, a_gbs))
        source.append((s_fps, s_gbs))
        ratios.append(s_fps / a_fps)
        sender += [sent["gbytes_per_s"], sent_s["gbytes_per_s"]]
        (summary,) = summaries
        per_msg.append(
            (summary["decode_s"] / summary["messages"], summary["put_s"] / summary["messages"])
        )
    med = statistics.median
    a_fps, a_gbs = (med(x) for x in zip(*anchor))
    s_fps, s_gbs = (med(x) for x in zip(*source))
    p_fps, p_gbs = (med(x) for x in zip(*stored))
    vs_stored = med(s[0] / p[0] for s, p in zip(source, stored))
    decode_ms, put_ms = (1000 * med(x) for x in zip(*per_msg))
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    rows = [
        (transport, "anchor: recv+decode loop", a_fps, a_gbs, "", ""),
        (transport, "ref: loop + ray.put", p_fps, p_gbs, "", ""),
        (transport, "source actor -> Q1", s_fps, s_gbs, f"{med(ratios):.2f}", spread),
    ]
    fields = {
        f"{transport}_anchor_gbs": round(a_gbs, 3),
        f"{transport}_source_gbs": round(s_gbs, 3),
        f"{transport}_ratio": round(med(ratios), 3),
        f"{transport}_loop_put_gbs": round(p_gbs, 3),
        f"{transport}_ratio_vs_loop_put": round(vs_stored, 3),
        f"{transport}_ratios": [round(r, 3) for r in ratios],
        f"{transport}_sender_gbs": round(med(sender), 3),
        f"{transport}_source_decode_ms_per_msg": round(decode_ms, 1),
        f"{transport}_source_put_ms_per_msg": round(put_ms, 1),
    }
    return rows, fields


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    ray.init(
        num_cpus=4,
        object_store_memory=3 << 30,
        include_dashboard=False,
        namespace="ingest-bench",
        log_to_driver=False,
    )
    mb = args.batch_size * args.shape[0] * args.shape[1] * 4 / 1e6
    consumer = "maps the pixels" if args.fetch else "takes records only (pixels not fetched)"
    print(
        f"ingest: {args.messages} messages of {args.batch_size} x {args.shape[0]} x "
        f"{args.shape[1]} float32 ({mb:.0f} MB, uncompressed HDF5) per stream and run, "
        f"{args.repeats} repeats; the Q1 consumer {consumer}"
    )
    rows, result = (
        [],
        {
            "bench": "ingest",
            "shape": args.shape,
            "batch_size": args.batch_size,
            "messages": args.messages,
            "repeats": args.repeats,
            "fetch": args.fetch,
            "target": 0.85,
        },
    )
    for transport in args.transports:
        more_rows, fields = measure(args, transport)
        rows += more_rows
        result.update(fields)
    if not args.no_two_streams:
        fps, gbs, _, summaries = run_source(args, "zmq", streams=2)
        base = result.get("zmq_anchor_gbs")
        per_stream = round(gbs / 2 / base, 3) if base else None
        rows.append(("zmq x2", "two source actors -> Q1", fps, gbs, f"{per_stream}/stream", ""))
        result.update(
            {"two_streams_gbs": round(gbs, 3), "two_streams_ratio_per_stream": per_stream}
        )
    print(
        f"{'transport':<10} {'measurement':<26} {'frames/s':>9} {'GB/s':>7} {'ratio':>12} {'range':>10}"
    )
    for transport, what, fps, gbs, ratio, spread in rows:
        print(f"{transport:<10} {what:<26} {fps:>9.1f} {gbs:>7.3f} {ratio:>12} {spread:>10}")
    for transport in args.transports:
        print(
            f"{transport} source, per message: decode {result[f'{transport}_source_decode_ms_per_msg']} ms, "
            f"put into Q1 {result[f'{transport}_source_put_ms_per_msg']} ms; pusher hand-off "
            f"{result[f'{transport}_sender_gbs']} GB/s"
        )
    for transport in args.transports:
        print(f"{transport} source / (loop + ray.put): {result[f'{transport}_ratio_vs_loop_put']}")
    print("ratio = source / anchor frames/s, median of paired runs. The machine is shared and has")
    print("2 cores (sender, receiver and Ray compete for them): figures are noisy.")
    ray.shutdown()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
