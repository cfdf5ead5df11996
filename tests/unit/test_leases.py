"""The shard's lease bookkeeping (queue/leases.py) and its memory of accepted keys
(queue/seen.py): plain objects, tested without Ray."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from peaknet_pipeline.queue.leases import Entry, LeaseBook
from peaknet_pipeline.queue.seen import SeenKeys


@dataclass
class Rec:
    key: tuple[str, int]
    size: int = 4


def entry(seq: int) -> Entry:
    return Entry(Rec(("s", seq)), nbytes=10)


def test_an_acknowledged_record_is_forgotten_and_a_second_ack_is_late():
    book = LeaseBook(lease_s=10, max_deliveries=3)
    token = book.lease(entry(0), "a", now=0.0)
    assert book.ack([token]) == 1
    assert book.ack([token]) == 0
    assert book.outstanding() == 0
    assert book.stats["acks"] == 1 and book.stats["late_acks"] == 1
    assert book.stats["frames_acked"] == 4


def test_release_gives_back_only_that_consumers_records_oldest_first():
    book = LeaseBook(lease_s=10, max_deliveries=3)
    first, other, second = entry(0), entry(1), entry(2)
    book.lease(first, "a", 0.0)
    book.lease(other, "b", 0.0)
    book.lease(second, "a", 0.0)
    assert book.release("a") == [first, second]
    assert book.holds("b") and not book.holds("a")
    assert "a" in book.released


def test_a_lease_expires_unless_extended():
    book = LeaseBook(lease_s=10, max_deliveries=3)
    kept, lost = entry(0), entry(1)
    book.lease(kept, "alive", 0.0)
    book.lease(lost, "stuck", 0.0)
    book.extend("alive", now=8.0)
    assert book.next_deadline() == 10.0
    assert book.expire(now=12.0) == [lost]
    assert book.stats["expired"] == 1
    assert book.expire(now=17.9) == []
    assert book.expire(now=18.0) == [kept]


def test_a_record_delivered_max_deliveries_times_goes_to_the_dead_letters():
    book = LeaseBook(lease_s=10, max_deliveries=2)
    poison = entry(7)
    book.lease(poison, "a", 0.0)
    assert book.release("a") == [poison]  # one delivery: queued again
    book.lease(poison, "b", 0.0)
    assert book.release("b") == []  # the second: dead
    assert book.stats["redeliveries"] == 1
    assert book.stats["dead_lettered"] == 1 and book.stats["frames_dead"] == 4
    assert book.dead_letters == [{"record": ["s", 7], "deliveries": 2, "consumers": ["a", "b"]}]


def test_cancel_undoes_a_delivery_as_if_never_handed_out():
    book = LeaseBook(lease_s=10, max_deliveries=1)
    e = entry(0)
    token = book.lease(e, "a", 0.0)
    assert book.cancel([token]) == [e]
    assert e.deliveries == 0 and e.consumers == ()
    book.lease(e, "b", 0.0)
    assert book.release("b") == []  # its one real delivery: dead, not two
    assert book.dead_letters[0]["consumers"] == ["b"]


def test_seen_keys_remember_each_source_separately():
    seen = SeenKeys()
    seen.add(("a", 0))
    seen.add(("a", 3))
    seen.add(("b", 1000))
    assert ("a", 0) in seen and ("a", 3) in seen and ("b", 1000) in seen
    assert ("a", 1) not in seen and ("b", 0) not in seen and ("c", 0) not in seen
    assert seen.highest("a") == 3 and seen.highest("b") == 1000 and seen.highest("c") == -1
    assert seen.first_missing("a") == 1
    with pytest.raises(ValueError, match="start at 0"):
        seen.add(("a", -1))


def test_first_missing_walks_one_shards_residue_class():
    seen = SeenKeys()
    for seq in (1, 4, 7, 10, 2):  # a shard of 3 holding the numbers 1, 4, 7, ...
        seen.add(("s", seq))
    assert seen.first_missing("s", step=3, start=1) == 13
    assert seen.first_missing("s", step=3, start=2) == 5


def test_a_million_keys_cost_little_memory():
    seen = SeenKeys()
    seen.add(("s", 999_999))
    assert len(seen._bits["s"]) < 200_000
    assert seen.highest("s") == 999_999
