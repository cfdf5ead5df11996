"""ShardedQueue on a real local Ray: ordering, blocking, capacity, end of stream, attach,
stats. Upstream lesson 3 (polling, lost order, no blocking) lives here; failures (a producer
or a wait that dies, lesson 4) are in test_queue_failures.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from helpers import Item, wait_blocked
from peaknet_pipeline.queue import (
    Empty,
    EndOfStream,
    Full,
    QueueProducer,
    ShardedQueue,
    TooManyBlockedCalls,
)

pytestmark = pytest.mark.ray


def _in_thread(fn):
    """Run fn in a thread; returns (thread, box) where box holds its result or exception."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_fifo_within_a_shard(make_queue):
    q = make_queue(num_shards=1)
    for i in range(20):
        q.put(Item(i))
    got = [q.get().value for _ in range(20)]
    assert got == list(range(20))


def test_put_many_get_many_round_robin_keeps_per_shard_order(make_queue):
    q = make_queue(num_shards=3, capacity_items=300)
    q.put_many([Item(i) for i in range(90)])
    shards = q.stats()["shards"]
    assert [s["depth"] for s in shards] == [30, 30, 30]
    got = []
    while len(got) < 90:
        got += [it.value for it in q.get_many(16)]
    assert sorted(got) == list(range(90))
    # Item i went to shard (offset + i) % 3: items of one shard come out in put order.
    for residue in range(3):
        same_shard = [v for v in got if v % 3 == residue]
        assert same_shard == sorted(same_shard)


def test_home_shard_first_then_steal(make_queue):
    q = make_queue(num_shards=2, capacity_items=100)
    home, other = q.with_home(0), q.with_home(1)
    q.put_many([Item(i) for i in range(4)])  # two per shard
    first = home.get_many(10, timeout=5)
    assert len(first) == 2
    assert home.stats()["shards"][0]["depth"] == 0
    # Home is empty now: the same consumer steals from shard 1 instead of waiting.
    stolen = home.get_many(10, timeout=5)
    assert len(stolen) == 2
    assert other.stats()["depth"] == 0


def test_blocking_get_wakes_on_put(make_queue):
    q = make_queue(num_shards=2)
    thread, box = _in_thread(lambda: q.get(timeout=60))
    thread.join(0.5)
    assert thread.is_alive(), "get returned before anything was put"
    q.put(Item(42))
    thread.join(10)
    assert not thread.is_alive()
    assert box["result"].value == 42


def test_get_times_out_with_empty(make_queue):
    q = make_queue(num_shards=2)
    t0 = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 5.0  # the timeout, not the 30 s lease
    t0 = time.monotonic()
    with pytest.raises(Empty):
        q.get(block=False)
    assert time.monotonic() - t0 < 5.0


def test_full_queue_blocks_producer_until_a_get(make_queue):
    q = make_queue(num_shards=1, capacity_items=2)
    q.put_many([Item(0), Item(1)])
    thread, box = _in_thread(lambda: q.put(Item(2), timeout=60))
    thread.join(0.5)
    assert thread.is_alive(), "put into a full queue did not block"
    assert q.get().value == 0
    thread.join(10)
    assert not thread.is_alive() and "error" not in box
    assert [q.get().value for _ in range(2)] == [1, 2]


def test_put_timeout_raises_full_listing_what_was_not_placed(make_queue):
    q = make_queue(num_shards=1, capacity_items=3)
    with pytest.raises(Full) as err:
        q.put_many([Item(i) for i in range(5)], timeout=0.2)
    assert [it.value for it in err.value.rejected] == [3, 4]
    with pytest.raises(Full):
        q.put(Item(9), block=False)
    assert q.stats()["depth"] == 3


def test_rejected_records_are_listed_in_the_order_they_were_given(make_queue):
    q = make_queue(num_shards=2, capacity_items=2)
    with pytest.raises(Full) as err:
        q.put_many([Item(i) for i in range(6)], timeout=0.2)
    assert [it.value for it in err.value.rejected] == [2, 3, 4, 5]


def test_capacity_is_split_over_the_shards_without_growing(make_queue):
    q = make_queue(num_shards=3, capacity_items=10, capacity_bytes=1000)
    stats = q.stats()
    assert (stats["capacity_items"], stats["capacity_bytes"]) == (10, 1000)
    assert sorted(s["capacity_items"] for s in stats["shards"]) == [3, 3, 4]
    with pytest.raises(ValueError, match="capacity_items=2 is less than one record"):
        ShardedQueue.create("too-small", num_shards=3, capacity_items=2)


def test_byte_capacity(make_queue):
    q = make_queue(num_shards=1, capacity_items=100, capacity_bytes=1000)
    q.put_many([Item(0, 400), Item(1, 400)])
    with pytest.raises(Full):
        q.put(Item(2, 400), timeout=0.1)
    assert q.stats()["bytes"] == 800
    q.get()
    q.put(Item(2, 400), timeout=5)
    assert q.stats()["bytes"] == 800


def test_a_record_larger_than_the_byte_capacity_passes_alone(make_queue):
    q = make_queue(num_shards=1, capacity_bytes=100)
    q.put(Item(0, 5000), timeout=1)
    with pytest.raises(Full):
        q.put(Item(1, 10), timeout=0.1)
    assert q.get().value == 0


def test_end_of_stream_with_several_producers_and_consumers(make_queue):
    q = make_queue(num_shards=3, capacity_items=12)
    producers = [f"p{i}" for i in range(3)]
    for pid in producers:
        q.register_producer(pid)
    received: list[list[int]] = [[] for _ in range(4)]

    def consume(k):
        c = q.with_home(k)
        try:
            while True:
                received[k] += [it.value for it in c.get_many(5, timeout=60)]
        except EndOfStream:
            return "eos"

    consumers = [_in_thread(lambda k=k: consume(k)) for k in range(4)]

    def produce(p):
        for i in range(100):
            q.put(Item(p * 1000 + i), timeout=60)
        q.close_producer(producers[p])

    writers = [_in_thread(lambda p=p: produce(p)) for p in range(3)]
    for thread, _ in writers + consumers:
        thread.join(120)
    assert all(box.get("result") == "eos" for _, box in consumers)
    everything = sorted(v for got in received for v in got)
    assert everything == sorted(p * 1000 + i for p in range(3) for i in range(100))
    stats = q.stats()
    assert stats["puts"] == stats["gets"] == 300 and stats["end_of_stream"]


def test_no_end_of_stream_while_a_producer_is_open(make_queue):
    q = make_queue(num_shards=2)
    q.register_producer("a")
    q.register_producer("b")
    q.close_producer("a")
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    q.close_producer("b")
    with pytest.raises(EndOfStream):
        q.get(timeout=5)


def test_end_of_stream_wakes_a_blocked_consumer(make_queue):
    q = make_queue(num_shards=2)
    q.register_producer("only")
    thread, box = _in_thread(lambda: q.get(timeout=60))
    thread.join(0.3)
    assert thread.is_alive()
    q.close_producer("only")
    thread.join(10)
    assert isinstance(box.get("error"), EndOfStream)


def test_queued_records_are_delivered_before_end_of_stream(make_queue):
    q = make_queue(num_shards=2)
    q.register_producer("p")
    q.put_many([Item(1), Item(2), Item(3)])
    q.close_producer("p")
    got = []
    with pytest.raises(EndOfStream):
        while True:
            got += [it.value for it in q.get_many(2, timeout=5)]
    assert sorted(got) == [1, 2, 3]


def test_seal_ends_the_stream_and_rejects_puts(make_queue):
    q = make_queue(num_shards=1)
    q.register_producer("p")
    q.put(Item(1))
    q.seal()
    late = QueueProducer(q, "late")
    late.put(Item(2))
    with pytest.raises(Full, match="sealed"):
        late.flush()
    assert q.get(timeout=5).value == 1
    with pytest.raises(EndOfStream):
        q.get(timeout=5)


def test_blocked_calls_are_bounded_and_cannot_starve_the_calls_that_release_them(make_queue):
    # Each blocked get holds a shard thread. At the limit, one more blocking call fails with an
    # error naming the setting, while puts and stats still run on the reserved threads.
    import ray

    q = make_queue(num_shards=1, max_blocked_calls=3)
    waiting = [q._shards[0].get.remote(1, 60) for _ in range(3)]
    wait_blocked(q, 3)
    with pytest.raises(TooManyBlockedCalls, match="max_blocked_calls_per_shard"):
        ray.get(q._shards[0].get.remote(1, 60), timeout=20)
    q.put_many([Item(i) for i in range(3)], timeout=20)
    answers = ray.get(waiting, timeout=20)
    assert sorted(it.value for _, items in answers for it in items) == [0, 1, 2]
    assert q.stats()["shards"][0]["blocked_calls"] == 0


def test_each_record_wakes_one_waiting_get(make_queue):
    import ray

    q = make_queue(num_shards=1)
    waiting = [q._shards[0].get.remote(1, 60) for _ in range(5)]
    wait_blocked(q, 5)
    for i in range(5):
        q.put(Item(i))
    answers = ray.get(waiting, timeout=20)
    assert sorted(it.value for _, items in answers for it in items) == list(range(5))


def test_blocked_consumers_across_shards_lose_nothing(make_queue):
    # Consumers wait on all shards at once and withdraw the other waits; every item must
    # reach exactly one consumer.
    q = make_queue(num_shards=4, capacity_items=400)
    q.register_producer("x")
    received: list[int] = []
    lock = threading.Lock()

    def consume(k):
        c = q.with_home(k)
        try:
            while True:
                got = [it.value for it in c.get_many(2, timeout=60)]
                with lock:
                    received.extend(got)
        except EndOfStream:
            return None

    consumers = [_in_thread(lambda k=k: consume(k)) for k in range(3)]
    for i in range(300):
        q.put(Item(i))
    q.close_producer("x")
    for thread, _ in consumers:
        thread.join(120)
    assert sorted(received) == list(range(300))


def test_create_twice_is_a_clear_error(make_queue, unique_name):
    q = make_queue(num_shards=2)
    with pytest.raises(ValueError, match="already exists"):
        ShardedQueue.create(q.name, num_shards=2)


def test_attach_unknown_queue_names_it(ray_session):
    with pytest.raises(ValueError, match="no queue named 'nope-queue'"):
        ShardedQueue.attach("nope-queue")


@pytest.mark.slow
def test_attach_by_name_from_another_process(make_queue):
    import ray

    q = make_queue(num_shards=2, capacity_items=10)
    q.put_many([Item(1), Item(2)])
    script = textwrap.dedent(
        f"""
        import json, ray
        from dataclasses import dataclass
        from peaknet_pipeline.queue import ShardedQueue
        ray.init(address={ray.get_runtime_context().gcs_address!r},
                 namespace={q.namespace!r}, logging_level="ERROR")
        q = ShardedQueue.attach({q.name!r})
        got = sorted(int(x) for x in [q.get(timeout=10), q.get(timeout=10)])
        q.put(41)
        print(json.dumps({{"num_shards": q.num_shards, "got": got}}))
        """
    )
    # Items defined in a test module cannot be unpickled elsewhere: use plain ints there.
    q.get(), q.get()
    q.put_many([1, 2])
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer == {"num_shards": 2, "got": [1, 2]}
    assert q.get(timeout=5) == 41


@pytest.mark.slow
def test_shards_go_with_their_process_unless_asked_to_persist(ray_session, unique_name):
    import ray

    gone, kept = f"{unique_name}-gone", f"{unique_name}-kept"
    namespace = ray.get_runtime_context().namespace
    script = textwrap.dedent(
        f"""
        import sys, ray
        from peaknet_pipeline.queue import ShardedQueue
        ray.init(address={ray.get_runtime_context().gcs_address!r},
                 namespace={namespace!r}, logging_level="ERROR")
        ShardedQueue.create({gone!r}, num_shards=2).put_many([1, 2])
        ShardedQueue.create({kept!r}, num_shards=2, persist=True).put_many([3, 4])
        print("created", flush=True)
        sys.stdin.readline()
        """
    )
    creator = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert creator.stdout.readline().strip() == "created"
        doomed = ShardedQueue.attach(gone)
        survivor = ShardedQueue.attach(kept)
    finally:
        creator.communicate("\n", timeout=120)  # the creating process exits here
    try:
        for shard in doomed._shards:
            with pytest.raises(ray.exceptions.RayActorError):
                ray.get(shard.info.remote(), timeout=60)
        got = survivor.get_many(10, timeout=10) + survivor.get_many(10, timeout=10)
        assert sorted(got) == [3, 4]
    finally:
        survivor.destroy()


def test_stats_are_counted(make_queue):
    q = make_queue(num_shards=2, capacity_items=10, capacity_bytes=10_000)
    q.put_many([Item(i, 100) for i in range(6)])
    q.get_many(2)
    stats = q.stats()
    assert stats["puts"] == 6 and stats["gets"] == 2
    assert stats["depth"] == 4 and stats["bytes"] == 400
    assert stats["capacity_items"] == 10 and stats["num_shards"] == 2
    assert len(stats["shards"]) == 2
    assert stats["put_blocked_s"] == 0
    assert sum(len(q.get_many(10)) for _ in range(2)) == 4
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    assert q.stats()["get_blocked_s"] >= 0.2


def test_blocked_time_counts_each_wait_once(make_queue):
    # One consumer waiting 1 s on four shards waited 1 s, not 4; a put waiting for its
    # predecessor's turn was not blocked by a full queue.
    import ray

    from peaknet_pipeline.queue.admission import PutRequest

    q = make_queue(num_shards=4, capacity_items=40)
    with pytest.raises(Empty):
        q.get(timeout=1.0)
    assert 1.0 <= q.stats()["get_blocked_s"] < 2.0
    q.register_producer("p")
    later = q._shards[0].put.remote(PutRequest([Item(1)], "p", None, None, 1))
    wait_blocked(q, 1)
    ray.get(q._shards[0].put.remote(PutRequest([Item(0)], "p", None, None, 0)))
    assert ray.get(later, timeout=20) == (1, "ok")
    assert q.stats()["put_blocked_s"] == 0


@pytest.mark.parametrize("num_shards", [1, 3])
def test_a_producer_with_puts_in_flight_keeps_fifo_per_shard(make_queue, num_shards):
    # Ray may start an async actor's calls out of order; with 32 puts in flight this reordered
    # dozens of records per thousand before puts were numbered per producer and shard.
    q = make_queue(num_shards=num_shards, capacity_items=2000)
    producer = QueueProducer(q, "p", max_in_flight=32)
    for i in range(600):
        producer.put(Item(i))
    producer.close()
    import ray

    per_shard = []
    for shard in range(num_shards):  # one non-blocking get per shard takes all it holds
        _, items = ray.get(q._shards[shard].get.remote(1000, 0.0))
        per_shard.append([it.value for it in items])
    assert sorted(v for got in per_shard for v in got) == list(range(600))
    assert all(got == sorted(got) for got in per_shard)


def test_max_items_is_a_real_limit_and_the_surplus_stays_queued(make_queue):
    # A consumer waiting on two shards when two records arrive together used to get one from
    # each shard, and get() kept the first: the other was lost (19 times in 20). Surplus goes
    # back to the front of its shard, in order.
    q = make_queue(num_shards=2, capacity_items=8)
    q.home = 0
    for round_ in range(20):
        thread, box = _in_thread(lambda: q.get(timeout=30))
        wait_blocked(q, 1, shard=0)
        wait_blocked(q, 1, shard=1)
        q.put_many([Item(2 * round_), Item(2 * round_ + 1)])  # one to each shard
        thread.join(timeout=30)
        first = box["result"]
        second = q.get(timeout=10)
        assert sorted([first.value, second.value]) == [2 * round_, 2 * round_ + 1], round_
        assert q.stats()["depth"] == 0
    q.put_many([Item(i) for i in range(6)])
    assert len(q.get_many(2, timeout=10)) <= 2  # from the home shard, or stolen: at most 2
