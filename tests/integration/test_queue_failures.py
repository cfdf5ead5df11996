"""ShardedQueue when something fails: a producer that dies (upstream lesson 4: queued data
became unreadable), a producer closed on its behalf, a consumer's wait that fails half-way.
Nothing accepted may be lost, and end of stream may never be followed by a record."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from helpers import Item, wait_blocked
from peaknet_pipeline.queue import (
    EndOfStream,
    Outbox,
    PayloadOwner,
    QueueProducer,
    TooManyBlockedCalls,
)
from peaknet_pipeline.queue.admission import PutRequest
from peaknet_pipeline.records import Batch

pytestmark = pytest.mark.ray

# 512 KB per batch: above Ray's inline limit, so payloads live in the object store, as frames do.
SHAPE = (2, 1, 256, 256)


class _Producer(PayloadOwner):
    """A producer actor that hands payloads to the queue, then dies."""

    def __init__(self, q):
        self.outbox = Outbox()
        self.q = q

    def produce(self, producer_id: str, count: int, then: str) -> list:
        """Put `count` batches; then close, or flush and crash (`then="crash"`). Returns an
        object this actor owns, whose fate shows when Ray has noticed the actor's death."""
        import ray

        producer = QueueProducer(self.q, producer_id, self.outbox)
        for i in range(count):
            frames = np.full(SHAPE, i, np.float32)
            meta = {"event_id": np.array([2 * i, 2 * i + 1])}
            producer.put(Batch.describe(frames, meta, producer_id, i), payload=frames)
        if then == "crash":
            producer.flush()  # every put accepted ...
            os._exit(1)  # ... then the process dies: the OOM killer, a segfault, a bug
        producer.close()
        return [ray.put(np.zeros(SHAPE, np.float32))]


class _SlowOwner(PayloadOwner):
    """Holds payloads for puts made on its behalf and hands them over after `delay_s`."""

    def __init__(self, delay_s: float):
        self.outbox = Outbox()
        self.delay_s = delay_s

    def hold(self, payload) -> int:
        return self.outbox.hold(payload)

    def take_payload(self, key: int):
        time.sleep(self.delay_s)
        return super().take_payload(key)


def _slow_put(q, delay_s: float):
    """Register producer "p" with a slow owner; submit its put number 0 of one batch.
    Returns the put's ref and the owner (kill it when done: it may still be sleeping)."""
    import ray

    owner = ray.remote(_SlowOwner).options(max_concurrency=2, num_cpus=0).remote(delay_s)
    q.register_producer("p", owner)
    frames = np.zeros(SHAPE, np.float32)
    record = Batch.describe(frames, {"event_id": np.array([0, 1])}, "p", 0)
    key = ray.get(owner.hold.remote(frames))
    return q._shards[0].put.remote(PutRequest([record], "p", [key], None, 0)), owner


def _start_producer(q):
    import ray

    return ray.remote(_Producer).options(max_concurrency=3, num_cpus=0.1).remote(q)


def _drain(q) -> list:
    batches = []
    with pytest.raises(EndOfStream):
        while True:
            batches += q.get_many(4, timeout=30)
    return batches


def _assert_readable(batches: list, count: int) -> None:
    import ray

    assert sorted(b.seq for b in batches) == list(range(count))
    for batch, frames in zip(batches, ray.get([b.images for b in batches], timeout=60)):
        assert frames.shape == SHAPE and np.all(frames == batch.seq)
        assert list(batch.meta["event_id"]) == [2 * batch.seq, 2 * batch.seq + 1]


def test_queued_data_survives_the_death_of_its_producer(make_queue):
    import ray

    q = make_queue(num_shards=2, capacity_items=20)
    actor = _start_producer(q)
    [owned_by_actor] = ray.get(actor.produce.remote("doomed", 6, "close"))
    ray.kill(actor, no_restart=True)
    # Reading too early could succeed even if the actor owned the batches: wait until Ray has
    # made an object the actor did own unreadable.
    deadline = time.monotonic() + 60
    while True:
        try:
            ray.get(owned_by_actor, timeout=30)
        except ray.exceptions.OwnerDiedError:
            break
        assert time.monotonic() < deadline, "Ray never noticed that the producer died"
        time.sleep(0.1)
    _assert_readable(_drain(q), 6)


def test_records_accepted_before_a_producer_crashed_stay_readable(make_queue):
    # A put is accepted only once the shard owns its payload: a crash right after flush()
    # must leave every accepted record readable.
    import ray

    q = make_queue(num_shards=2, capacity_items=50)
    actor = _start_producer(q)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.produce.remote("crashy", 8, "crash"))
    q.close_producer("crashy")  # what the driver does for a failed source
    _assert_readable(_drain(q), 8)


def test_closing_a_producer_refuses_its_waiting_puts_before_end_of_stream(make_queue):
    # The driver closes on behalf of a failed producer whose puts still wait for room: they
    # must be refused, so no record can arrive after a consumer was told end of stream.
    import ray

    q = make_queue(num_shards=1, capacity_items=1)
    q.register_producer("p")
    shard = q._shards[0]
    assert ray.get(shard.put.remote(PutRequest([Item(0)], "p", None, None, 0))) == (1, "ok")
    waiting_for_room = shard.put.remote(PutRequest([Item(1)], "p", None, None, 1))
    waiting_for_turn = shard.put.remote(PutRequest([Item(3)], "p", None, None, 3))
    wait_blocked(q, 2)
    q.close_producer("p")
    assert ray.get([waiting_for_room, waiting_for_turn], timeout=20) == [(0, "closed")] * 2
    assert [it.value for it in q.get_many(10, timeout=5)] == [0]
    with pytest.raises(EndOfStream):
        q.get(timeout=5)
    stats = q.stats()["shards"][0]
    assert stats["depth"] == 0 and stats["blocked_calls"] == 0


def test_a_wait_that_fails_on_one_shard_leaves_no_get_behind(make_queue):
    # A consumer waits on both shards; shard 1 refuses (no blocked call left there). The wait
    # on shard 0 must be withdrawn before the error reaches the consumer, or it would take the
    # next record for nobody.
    import ray

    q = make_queue(num_shards=2, max_blocked_calls=1)
    q.register_producer("z")
    holder = q._shards[1].put.remote(PutRequest([Item(-1)], "z", None, None, 1))
    wait_blocked(q, 1, shard=1)
    with pytest.raises(TooManyBlockedCalls):
        q.with_home(0).get_many(1, timeout=30)
    assert q.stats()["shards"][0]["blocked_calls"] == 0
    ray.get(q._shards[0].put.remote(PutRequest([Item(7)])))
    status, items = ray.get(q._shards[0].get.remote(10, 0.0))
    assert (status, [it.value for it in items]) == ("ok", [7])
    q.seal()
    assert ray.get(holder, timeout=20) == (0, "sealed")


def test_records_taken_by_a_wait_that_also_failed_are_delivered(make_queue):
    # Shard 0 has a record, shard 1 refuses to wait: whichever answers first, the consumer
    # gets the record (the refusal would show again on its next call).
    import ray

    q = make_queue(num_shards=2, max_blocked_calls=1)
    q.register_producer("z")
    holder = q._shards[1].put.remote(PutRequest([Item(-1)], "z", None, None, 1))
    wait_blocked(q, 1, shard=1)
    ray.get(q._shards[0].put.remote(PutRequest([Item(7)])))
    assert [it.value for it in q.with_home(1).get_many(5, timeout=30)] == [7]
    assert q.stats()["depth"] == 0
    q.seal()
    assert ray.get(holder, timeout=20) == (0, "sealed")


def test_records_given_back_come_out_first_in_order(make_queue):
    import ray

    q = make_queue(num_shards=1, capacity_items=10)
    q.put_many([Item(i) for i in range(4)])
    shard = q._shards[0]
    _, taken = ray.get(shard.get.remote(2, 0.0))
    ray.get(shard.give_back.remote(taken))
    assert [it.value for it in q.get_many(10)] == [0, 1, 2, 3]
    stats = q.stats()
    assert (stats["puts"], stats["gets"], stats["depth"]) == (4, 4, 0)


def test_seal_releases_a_put_waiting_for_its_turn(make_queue):
    # Put number 1 of a producer waits for number 0, which never comes (its producer died):
    # the hard stop must still release it rather than hold a shard thread forever.
    import ray

    q = make_queue(num_shards=1)
    q.register_producer("p")
    waiting = q._shards[0].put.remote(PutRequest([Item(1)], "p", None, None, 1))
    wait_blocked(q, 1)
    q.seal()
    assert ray.get(waiting, timeout=20) == (0, "sealed")


def test_seal_is_not_held_up_by_a_producer_that_does_not_hand_over(make_queue):
    import ray

    q = make_queue(num_shards=1)
    fetching, owner = _slow_put(q, delay_s=120)
    wait_blocked(q, 1)  # the shard waits for the payload
    q.seal()
    assert ray.get(fetching, timeout=20) == (0, "sealed")
    with pytest.raises(EndOfStream):
        q.get(timeout=20)
    ray.kill(owner)


def test_a_put_refused_before_its_turn_lets_no_successor_overtake(make_queue):
    # Put 0 waits for its payload and holds the only blocked call; put 1 fails waiting for
    # its turn. Put 2 must still wait for put 0, not slip in ahead of it.
    import ray

    q = make_queue(num_shards=1, max_blocked_calls=1)
    fetching, owner = _slow_put(q, delay_s=3)
    wait_blocked(q, 1)
    for order in (1, 2):
        with pytest.raises(TooManyBlockedCalls):
            ray.get(q._shards[0].put.remote(PutRequest([Item(order)], "p", None, None, order)))
    assert ray.get(fetching, timeout=30) == (1, "ok")
    assert [b.seq for b in q.get_many(10, timeout=5)] == [0]
    ray.kill(owner)
