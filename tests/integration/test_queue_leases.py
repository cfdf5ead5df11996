"""Leases on a real sharded queue: a record stays the queue's until its consumer acknowledges
it, comes back when the consumer dies (released by the driver, or its lease runs out), goes
to the dead letters after too many deliveries, and a key is accepted once."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import ray

from peaknet_pipeline.queue import Drained, Empty, EndOfStream, Released


@dataclass
class Keyed:
    """A keyed record with no payload, like a Batch or a Result."""

    source: str
    seq: int
    size: int = 2
    nbytes: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return self.source, self.seq


@ray.remote(num_cpus=0)
class Holder:
    """A consumer that takes records under its leases and never acknowledges them."""

    def take(self, queue, consumer: str, n: int) -> list[int]:
        self.q = queue.as_consumer(consumer)
        return [r.seq for r in self.q.get_many(n, timeout=10)]


def fill(q, n: int, source: str = "s") -> None:
    q.register_producer("p")
    q.put_many([Keyed(source, i) for i in range(n)])
    q.close_producer("p")


def drain(consumer, limit: int = 100) -> list[int]:
    """Everything left, acknowledged as it comes, until end of stream."""
    seqs = []
    while len(seqs) <= limit:
        try:
            records = consumer.get_many(8, timeout=20)
        except EndOfStream:
            return seqs
        consumer.ack(records)
        seqs += [r.seq for r in records]
    raise AssertionError(f"more than {limit} records: {seqs}")


def test_records_of_a_killed_consumer_come_back_when_released(make_queue):
    q = make_queue(num_shards=1)
    fill(q, 6)
    holder = Holder.remote()
    taken = ray.get(holder.take.remote(q, "dead", 3))
    assert taken == [0, 1, 2]
    ray.kill(holder)
    assert q.release_consumer("dead") == 3
    survivor = q.as_consumer("alive")
    first = survivor.get_many(3, timeout=10)
    assert [r.seq for r in first] == [0, 1, 2]  # back at the front, oldest first
    assert survivor.previous_consumers(first[0]) == ("dead",)
    survivor.ack(first)
    assert drain(survivor) == [3, 4, 5]
    stats = q.stats()
    assert stats["redeliveries"] == 3 and stats["frames_acked"] == 12 and stats["leased"] == 0


def test_a_consumer_that_stops_extending_loses_its_leases_to_the_others(make_queue):
    q = make_queue(num_shards=1, lease_s=1.0)
    fill(q, 2)
    holder = Holder.remote()
    assert ray.get(holder.take.remote(q, "frozen", 2)) == [0, 1]
    ray.kill(holder)  # not released: only its lease running out brings the records back
    survivor = q.as_consumer("alive")
    assert sorted(drain(survivor)) == [0, 1]
    assert q.stats()["expired"] == 2


def test_a_slow_live_consumer_keeps_its_leases_past_lease_s(make_queue):
    q = make_queue(num_shards=1, lease_s=2.0)
    fill(q, 1)
    slow = q.as_consumer("slow")
    [record] = slow.get_many(1, timeout=10)
    other = q.as_consumer("other")
    with pytest.raises(Empty) as nothing:  # over two lease periods: slow's thread extends
        other.get_many(1, timeout=5.0)
    assert type(nothing.value) is Empty  # not Drained: "other" holds nothing
    slow.ack([record])
    slow.flush_acks()
    with pytest.raises(EndOfStream):
        other.get_many(1, timeout=10)
    stats = q.stats()
    assert stats["expired"] == 0 and stats["late_acks"] == 0 and stats["acks"] == 1


def test_end_of_stream_waits_for_every_lease_and_the_holder_is_told_to_settle(make_queue):
    q = make_queue(num_shards=2)
    fill(q, 2)
    holder = q.as_consumer("writer-0")
    records = holder.get_many(2, timeout=10)
    records += [] if len(records) == 2 else holder.get_many(1, timeout=10)
    other = q.as_consumer("writer-1")
    with pytest.raises(Empty) as nothing:  # not end of stream while writer-0 holds records
        other.get_many(1, timeout=0.5)
    assert type(nothing.value) is Empty
    with pytest.raises(Drained):
        holder.get_many(1, timeout=10)
    holder.ack(records)
    holder.settle(timeout_s=10)
    assert q.stats()["leased"] == 0  # every acknowledgement reached its shard
    with pytest.raises(EndOfStream):
        other.get_many(1, timeout=10)


def test_a_poison_record_goes_to_the_dead_letters_and_the_stream_still_ends(make_queue):
    q = make_queue(num_shards=1, max_deliveries=2)
    fill(q, 2)
    for victim in ("inference-0", "inference-1"):
        holder = Holder.remote()
        assert ray.get(holder.take.remote(q, victim, 1)) == [0]
        ray.kill(holder)
        q.release_consumer(victim)
    survivor = q.as_consumer("inference-2")
    assert drain(survivor) == [1]
    assert q.dead_letters() == [
        {"record": ["s", 0], "deliveries": 2, "consumers": ["inference-0", "inference-1"]}
    ]
    stats = q.stats()
    assert stats["frames_dead"] == 2 and stats["frames_acked"] == 2 and stats["frames_in"] == 4


def test_a_released_consumer_is_told_so_and_takes_nothing(make_queue):
    q = make_queue(num_shards=2)
    q.register_producer("p")
    q.put_many([Keyed("s", i) for i in range(4)])
    ghost = q.as_consumer("ghost")
    q.release_consumer("ghost")
    with pytest.raises(Released):
        ghost.get_many(1, timeout=5)
    assert q.stats()["depth"] == 4


def test_a_key_is_accepted_once_and_a_restart_resumes_at_the_first_gap(make_queue):
    q = make_queue(num_shards=3)
    q.register_producer("p")
    q.put_many([Keyed("src", i) for i in (0, 1, 2, 3, 5)])
    q.put_many([Keyed("src", i) for i in (2, 3, 4)])  # a restarted source sends again
    q.put_many([Keyed("other", 0)])
    assert q.resume_point("src") == (6, 5)
    assert q.resume_point("never") == (0, -1)
    q.close_producer("p")
    consumer = q.as_consumer("c")
    got = []
    while True:
        try:
            records = consumer.get_many(8, timeout=10)
        except EndOfStream:
            break
        consumer.ack(records)
        got += [r.key for r in records]
    assert sorted(got) == [("other", 0)] + [("src", i) for i in range(6)]
    stats = q.stats()
    assert stats["duplicates_dropped"] == 2 and stats["frames_in"] == 14


def test_acks_ride_on_the_next_get_and_none_is_lost_at_the_end(make_queue):
    q = make_queue(num_shards=1)
    fill(q, 50)
    consumer = q.as_consumer("one-by-one")
    for _ in range(50):
        consumer.ack([consumer.get(timeout=10)])
    deadline = time.monotonic() + 10
    with pytest.raises(EndOfStream):
        while time.monotonic() < deadline:
            try:
                consumer.get(timeout=10)
            except Drained:
                consumer.settle(timeout_s=10)
    stats = q.stats()
    assert stats["acks"] == 50 and stats["leased"] == 0 and stats["late_acks"] == 0
