"""QueueShard's rules without Ray: under @ray.remote it is a plain class, so these tests call
it directly (capacity in items and bytes, FIFO, end of stream, leases, de-duplication)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from peaknet_pipeline.queue.admission import PutRequest
from peaknet_pipeline.queue.shard import QueueShard
from peaknet_pipeline.queue.status import DRAINED, EMPTY, EOS, FULL, OK, RELEASED


@dataclass(frozen=True)
class Rec:
    seq: int
    nbytes: int = 1
    source: str = "s"
    keyed: bool = False
    size: int = 1

    @property
    def key(self):
        return (self.source, self.seq) if self.keyed else None


def shard(items: int = 4, nbytes: int = 1000, lease_s: float = 60.0, deliveries: int = 3):
    return QueueShard("q", 0, 1, items, nbytes, 8, lease_s, deliveries)


def put(s: QueueShard, *records, producer: str | None = None, timeout: float = 0.0):
    return s.put(PutRequest(list(records), producer, timeout=timeout))


def test_fifo_across_puts_and_gets():
    s = shard()
    put(s, Rec(1), Rec(2))
    put(s, Rec(3))
    assert s.get(2, 0.0) == (OK, [Rec(1), Rec(2)])
    assert s.get(5, 0.0) == (OK, [Rec(3)])


def test_capacity_in_items():
    s = shard(items=2)
    assert put(s, Rec(1), Rec(2), Rec(3)) == (2, FULL)
    assert s.stats()["depth"] == 2


def test_capacity_in_bytes_but_one_large_record_passes_alone():
    s = shard(nbytes=100)
    assert put(s, Rec(1, nbytes=60), Rec(2, nbytes=60)) == (1, FULL)
    s.get(1, 0.0)
    assert put(s, Rec(3, nbytes=500)) == (1, OK)  # alone, it may exceed the byte budget
    assert s.stats()["bytes"] == 500


def test_end_of_stream_only_once_every_registered_producer_closed():
    s = shard()
    assert s.get(1, 0.0) == (EMPTY, [])  # nobody registered yet: not over
    s.register("p1")
    s.register("p2")
    put(s, Rec(1), producer="p1")
    s.close_producer("p1")
    assert s.get(1, 0.0) == (OK, [Rec(1)])
    assert s.get(1, 0.0) == (EMPTY, [])  # p2 may still put
    s.close_producer("p2")
    assert s.get(1, 0.0) == (EOS, [])
    assert s.stats()["end_of_stream"]


def test_a_closed_producer_is_refused():
    s = shard()
    s.register("p")
    s.close_producer("p")
    with pytest.raises(ValueError, match="put after close"):
        put(s, Rec(1), producer="p")
    s.seal()
    assert put(s, Rec(2)) == (0, "sealed")


def test_a_key_is_accepted_once():
    s = shard()
    assert put(s, Rec(0, keyed=True), Rec(0, keyed=True), Rec(1, keyed=True)) == (3, OK)
    assert s.get(5, 0.0) == (OK, [Rec(0, keyed=True), Rec(1, keyed=True)])
    put(s, Rec(0, keyed=True))  # sent again after it was taken: still a copy
    assert s.stats()["duplicates_dropped"] == 2
    assert s.get(5, 0.0) == (EMPTY, [])
    assert s.resume_point("s") == (2, 1)  # a restarted source resumes at 2


def test_leases_hold_end_of_stream_until_acknowledged():
    s = shard()
    s.register("p")
    put(s, Rec(1), Rec(2), producer="p")
    s.close_producer("p")
    status, records, tokens, _ = s.lease("c", 2, 0.0)
    assert (status, records) == (OK, [Rec(1), Rec(2)])
    assert s.lease("c", 1, 0.0)[0] == DRAINED  # only our leases keep it open: settle them
    assert s.lease("other", 1, 0.0)[0] == EMPTY  # they may come back: wait
    s.ack(tokens[:1])
    assert s.lease("c", 1, 0.0, acks=tokens[1:])[0] == EOS  # acks ride on the next get
    assert s.stats()["acks"] == 2


def test_a_released_consumer_returns_its_records_to_the_front_and_gets_nothing():
    s = shard()
    put(s, Rec(1), Rec(2), Rec(3))
    s.lease("dead", 2, 0.0)
    assert s.release_consumer("dead") == 2
    assert s.lease("dead", 1, 0.0)[0] == RELEASED
    status, records, _, previous = s.lease("next", 3, 0.0)
    assert records == [Rec(1), Rec(2), Rec(3)]
    assert previous == {0: ("dead",), 1: ("dead",)}  # who had the redelivered ones


def test_an_expired_lease_comes_back():
    s = shard(lease_s=0.05)
    put(s, Rec(1))
    s.lease("slow", 1, 0.0)
    # The reaper requeues it at the deadline; this get waits for that (no sleep).
    status, records, _, previous = s.lease("other", 1, 5.0)
    assert (status, records, previous) == (OK, [Rec(1)], {0: ("slow",)})
    assert s.stats()["expired"] == 1


def test_a_record_delivered_too_often_goes_to_the_dead_letters():
    s = shard(deliveries=2)
    s.register("p")
    put(s, Rec(7, keyed=True), producer="p")
    s.close_producer("p")
    for consumer in ("c1", "c2"):
        s.lease(consumer, 1, 0.0)
        s.release_consumer(consumer)
    assert s.get(1, 0.0) == (EOS, [])
    [letter] = s.dead_letters()
    assert letter["record"] == ["s", 7] and letter["consumers"] == ["c1", "c2"]


def test_give_back_puts_leased_records_back_as_if_never_taken():
    s = shard()
    put(s, Rec(1), Rec(2))
    _, _, tokens, _ = s.lease("c", 2, 0.0)
    s.give_back(tokens=tokens[1:])
    assert s.lease("d", 1, 0.0)[1:3] == ([Rec(2)], [tokens[1] + 1])
    assert s.stats()["gets"] == 2


def test_a_withdrawn_get_returns_empty_even_before_it_arrives():
    s = shard()
    put(s, Rec(1))
    s.withdraw("t")
    assert s.get(1, 5.0, ticket="t") == (EMPTY, [])
    assert s.get(1, 0.0) == (OK, [Rec(1)])
