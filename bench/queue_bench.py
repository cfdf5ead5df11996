"""Queue benchmark: ShardedQueue against ray.util.queue.Queue, measured in the same run.

Producer and consumer are separate processes (Ray actors). Reported:
  single   one record per call: ours keeps a bounded window of puts in flight (QueueProducer)
           and gets with one blocking `get_many(1)` at a time, as the anchor does
  batched  put_many/get_many of 64 records
  wake     latency from a put to the return of a get that was blocked waiting for it
  idle     CPU used by a blocked consumer and by the shard while nothing arrives
Each figure is the median of --repeats runs. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import ray
from ray.util.queue import Queue as RayQueue

from peaknet_pipeline.queue import Drained, EndOfStream, QueueProducer, ShardedQueue
from peaknet_pipeline.queue.admission import PutRequest
from peaknet_pipeline.queue.shard import RESERVED_THREADS


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@ray.remote(num_cpus=0, max_concurrency=128 + RESERVED_THREADS)
class NoOpShard:
    """Answers like a shard (a threaded actor with as many threads) and does nothing: the
    floor Ray's calls set on this machine."""

    def put(self, request: PutRequest):
        return len(request.records), "ok"

    def get(self, max_items=1, timeout=None, ticket=None):
        return "ok", [0]


@ray.remote(num_cpus=0)
class Worker:
    """One process playing producer or consumer."""

    def pid(self) -> int:
        return os.getpid()

    # -- ray.util.queue (the anchor): its documented blocking calls, one record each ----------
    def ray_put(self, q: RayQueue, n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            q.put(i)
        return time.perf_counter() - t0

    def ray_get(self, q: RayQueue, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            q.get()
        return time.perf_counter() - t0

    def ray_put_batch(self, q: RayQueue, n: int, batch: int) -> None:
        for i in range(0, n, batch):
            while True:
                try:
                    q.put_nowait_batch(list(range(i, i + batch)))
                    break
                except Exception:  # noqa: BLE001 - Full: ray.util.queue has no blocking batch put
                    time.sleep(0.001)

    def ray_get_batch(self, q: RayQueue, n: int, batch: int) -> float:
        t0, got = time.perf_counter(), 0
        while got < n:
            try:
                got += len(q.get_nowait_batch(batch))
            except Exception:  # noqa: BLE001 - Empty: ray.util.queue has no blocking batch get
                time.sleep(0.001)
        return time.perf_counter() - t0

    # -- ShardedQueue --------------------------------------------------------------------------
    def put_single(self, q: ShardedQueue, n: int, window: int) -> None:
        producer = QueueProducer(q, "bench", max_in_flight=window)
        for i in range(n):
            producer.put(i)
        producer.close()

    def floor_calls(self, shard, n: int, window: int, method: str) -> float:
        """n calls of `method` on a no-op shard, `window` in flight besides the newest (0:
        one blocking call at a time); returns the seconds."""
        t0, pending = time.perf_counter(), []
        for i in range(n):
            if method == "put":  # the arguments QueueProducer sends
                call = shard.put.remote(PutRequest([i], "bench", None, None, i))
            else:
                call = shard.get.remote(1, 30)
            pending.append(call)
            if len(pending) > window:
                ray.get(pending.pop(0))
        ray.get(pending)
        return time.perf_counter() - t0

    def put_batched(self, q: ShardedQueue, n: int, batch: int) -> None:
        q.register_producer("bench")
        for i in range(0, n, batch):
            q.put_many(list(range(i, i + batch)))
        q.close_producer("bench")

    def get_batched(self, q: ShardedQueue, batch: int, ack: bool) -> tuple[int, float]:
        """`get_many(batch)` until the end (batch 1: the single-record case). With `ack`, a
        consumer under leases that acknowledges what it got at once (as inference does once
        its Result is in Q2)."""
        q = q.as_consumer("bench") if ack else q
        t0, got = time.perf_counter(), 0
        while True:
            try:
                items = q.get_many(batch)
            except Drained:  # only our own leases keep it open: the last acks are on their way
                q.settle(30.0)
                continue
            except EndOfStream:
                return got, time.perf_counter() - t0
            if ack:
                q.ack(items)
            got += len(items)

    def wake_latencies(self, q: ShardedQueue, samples: int) -> list[float]:
        """Block on get; each record is the wall-clock time of its put: return the delays."""
        delays = []
        for _ in range(samples):
            put_at = q.get(timeout=30)
            delays.append((time.time() - put_at) * 1e3)
        return delays

    def wait_blocked(self, q: ShardedQueue, seconds: float) -> str:
        try:
            q.get(timeout=seconds)
            return "item"
        except Exception as exc:  # noqa: BLE001 - Empty is the expected outcome
            return type(exc).__name__


def anchor_single(producer, consumer, n: int) -> float:
    q = RayQueue(maxsize=1000)
    put = producer.ray_put.remote(q, n)
    elapsed = ray.get(consumer.ray_get.remote(q, n))
    ray.get(put)
    ray.kill(q.actor)
    return n / elapsed


def floor_single(producer, consumer, n: int, window: int) -> float:
    """The same calls as `ours_single` on a shard that does nothing: Ray's own ceiling."""
    shard = NoOpShard.remote()
    ray.get(shard.put.remote(PutRequest([0])))
    times = ray.get(
        [
            producer.floor_calls.remote(shard, n, window, "put"),
            consumer.floor_calls.remote(shard, n, 0, "get"),
        ]
    )
    ray.kill(shard)
    return n / max(times)


def anchor_batched(producer, consumer, n: int, batch: int) -> float:
    q = RayQueue(maxsize=50 * batch)
    put = producer.ray_put_batch.remote(q, n, batch)
    elapsed = ray.get(consumer.ray_get_batch.remote(q, n, batch))
    ray.get(put)
    ray.kill(q.actor)
    return n / elapsed


def ours_single(producer, consumer, n: int, window: int, name: str, ack: bool = False) -> float:
    q = ShardedQueue.create(name, num_shards=1, capacity_items=1000)
    q.register_producer("bench")
    put = producer.put_single.remote(q, n, window)
    got, elapsed = ray.get(consumer.get_batched.remote(q, 1, ack))
    ray.get(put)
    q.destroy()
    assert got == n, f"lost records: {got} of {n}"
    return n / elapsed


def ours_batched(producer, consumer, n: int, batch: int, name: str, ack: bool = False) -> float:
    q = ShardedQueue.create(name, num_shards=1, capacity_items=50 * batch)
    q.register_producer("bench")
    put = producer.put_batched.remote(q, n, batch)
    got, elapsed = ray.get(consumer.get_batched.remote(q, batch, ack))
    ray.get(put)
    q.destroy()
    assert got == n, f"lost records: {got} of {n}"
    return n / elapsed


def wake_latency_ms(consumer, name: str, samples: int) -> float:
    """Median time from calling put to the return of a get blocked in another process."""
    q = ShardedQueue.create(name, num_shards=1)
    latencies = consumer.wake_latencies.remote(q, samples)
    for _ in range(samples):
        time.sleep(0.05)  # the consumer is blocked in get before each put: the case measured
        q.put(time.time())
    median = statistics.median(ray.get(latencies))
    q.destroy()
    return median


def idle_cpu(consumer, idle_worker, name: str, seconds: float) -> dict[str, float]:
    """CPU-seconds per second used while a consumer waits on an empty queue, next to those
    of a Ray worker doing nothing at all (Ray's own background threads) over the same time."""
    q = ShardedQueue.create(name, num_shards=1)
    shard_pid = ray.get(q._shards[0].__ray_call__.remote(lambda self: os.getpid()))
    pids = [ray.get(consumer.pid.remote()), shard_pid, ray.get(idle_worker.pid.remote())]
    before = [cpu_seconds(p) for p in pids]
    outcome = ray.get(consumer.wait_blocked.remote(q, seconds))
    used = [(cpu_seconds(p) - b) / seconds for p, b in zip(pids, before)]
    q.destroy()
    assert outcome == "Empty", outcome
    return dict(zip(("consumer_cpu_frac", "shard_cpu_frac", "idle_worker_cpu_frac"), used))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single-items", type=int, default=3000)
    parser.add_argument("--batched-items", type=int, default=64 * 600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--window", type=int, default=8, help="puts one producer keeps in flight (single)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wake-samples", type=int, default=60)
    parser.add_argument("--idle-s", type=float, default=5.0)
    args = parser.parse_args()

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    producer, consumer = Worker.remote(), Worker.remote()
    ray.get([producer.pid.remote(), consumer.pid.remote()])
    rows: dict[str, list[float]] = {
        k: []
        for k in ("ray_single", "ray_batched", "single", "batched", "floor", "single_ack")
        + ("batched_ack",)
    }
    for r in range(args.repeats):
        rows["ray_single"].append(anchor_single(producer, consumer, args.single_items))
        rows["single"].append(
            ours_single(producer, consumer, args.single_items, args.window, f"qs{r}")
        )
        rows["floor"].append(floor_single(producer, consumer, args.single_items, args.window))
        rows["ray_batched"].append(
            anchor_batched(producer, consumer, args.batched_items, args.batch)
        )
        rows["batched"].append(
            ours_batched(producer, consumer, args.batched_items, args.batch, f"qb{r}")
        )
        rows["single_ack"].append(
            ours_single(producer, consumer, args.single_items, args.window, f"qsa{r}", True)
        )
        rows["batched_ack"].append(
            ours_batched(producer, consumer, args.batched_items, args.batch, f"qba{r}", True)
        )
    med = {k: statistics.median(v) for k, v in rows.items()}
    paired = [ours / anchor for ours, anchor in zip(rows["single"], rows["ray_single"])]
    wake = wake_latency_ms(consumer, "qwake", args.wake_samples)
    idle = idle_cpu(consumer, producer, "qidle", args.idle_s)

    print(f"{'measurement':<44} {'items/s (median of ' + str(args.repeats) + ')':>26}")
    print(f"{'ray.util.queue put/get, one per call':<44} {med['ray_single']:>26.0f}")
    print(f"{f'ShardedQueue one per call, put window {args.window}':<44} {med['single']:>26.0f}")
    print(f"{'  same calls on a no-op actor (Ray floor)':<44} {med['floor']:>26.0f}")
    print(f"{f'ray.util.queue *_nowait_batch({args.batch})':<44} {med['ray_batched']:>26.0f}")
    print(f"{f'ShardedQueue put_many/get_many({args.batch})':<44} {med['batched']:>26.0f}")
    print(f"{'  one per call, leased and acknowledged':<44} {med['single_ack']:>26.0f}")
    print(f"{'  batched, leased and acknowledged':<44} {med['batched_ack']:>26.0f}")
    print("single ratio in each repeat: " + " ".join(f"{r:.2f}" for r in paired))
    print(f"blocked get wake-up after put: median {wake:.2f} ms over {args.wake_samples}")
    print(
        f"idle wait {args.idle_s:.0f} s: consumer {idle['consumer_cpu_frac']:.1%} CPU, "
        f"shard {idle['shard_cpu_frac']:.1%}, an idle Ray worker {idle['idle_worker_cpu_frac']:.1%}"
    )
    result = {
        "bench": "queue",
        "single_items_per_s": round(med["single"]),
        "anchor_ray_queue_single_items_per_s": round(med["ray_single"]),
        "single_ratio": round(med["single"] / med["ray_single"], 2),
        "single_ratio_per_repeat": [round(r, 2) for r in paired],
        "single_vs_noop_actor_floor": round(med["single"] / med["floor"], 2),
        "batched_items_per_s": round(med["batched"]),
        "batched_ratio_vs_anchor_single": round(med["batched"] / med["ray_single"], 1),
        "batched_ratio_vs_ray_queue_batched": round(med["batched"] / med["ray_batched"], 2),
        "single_acked_items_per_s": round(med["single_ack"]),
        "single_acked_ratio": round(med["single_ack"] / med["ray_single"], 2),
        "batched_acked_items_per_s": round(med["batched_ack"]),
        "batched_acked_ratio_vs_anchor_single": round(med["batched_ack"] / med["ray_single"], 1),
        "wake_median_ms": round(wake, 2),
        **{k: round(v, 4) for k, v in idle.items()},
        "targets_met": min(med["single"], med["single_ack"]) >= 1.5 * med["ray_single"]
        and min(med["batched"], med["batched_ack"]) >= 20 * med["ray_single"]
        and wake <= 5.0
        and idle["consumer_cpu_frac"] <= idle["idle_worker_cpu_frac"] + 0.01,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
