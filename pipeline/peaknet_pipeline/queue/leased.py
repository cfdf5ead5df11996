"""LeasedConsumer: one consumer's side of a sharded queue, getting under leases.

`ShardedQueue.as_consumer(id)` returns one. It gets as the queue handle does (reader.py), but
what it gets stays the shards' until it acknowledges each record with `ack` once its output is
safely downstream, like `queue.Queue.task_done` (shard.py, leases.py): until then a shard keeps
the record, and queues it again if the consumer is released (`ShardedQueue.release_consumer`,
when the driver sees it die) or stops extending its leases. Its own thread (acks.py) sends the
acknowledgements and extends the leases; acknowledgements pending for a shard ride on the next
get from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .acks import AckPump, Holdings, Receipt
from .reader import Drained, Released, ShardReader
from .status import RELEASED, Handout


class LeasedConsumer(ShardReader):
    """Gets from `shards` under leases as `consumer`; acknowledge with `ack`. Picklable."""

    def __init__(
        self, name: str, shards: list[Any], home: int, consumer: str, lease_s: float
    ) -> None:
        super().__init__(name, shards, home)
        self.consumer = consumer
        self.lease_s = lease_s
        self._holdings = Holdings()
        self._pump = AckPump(shards, consumer, self._holdings, lease_s)

    def __reduce__(self):
        return (LeasedConsumer, (self.name, self._shards, self.home, self.consumer, self.lease_s))

    # -- the steps of a get (reader.py) ------------------------------------------------------
    def _call(
        self, index: int, max_items: int, timeout: float | None, ticket: Any, count_wait: bool
    ) -> Any:
        acks = self._pump.take(index)  # pending acks for this shard ride along
        shard = self._shards[index]
        return shard.lease.remote(self.consumer, max_items, timeout, ticket, count_wait, acks)

    def _handout(self, answer: Any) -> Handout:
        handout = Handout(*answer)
        if handout.status == RELEASED:
            raise Released(f"queue {self.name}: consumer {self.consumer!r} was released")
        return handout

    def _hold(self, index: int, handout: Handout, kept: list) -> None:
        """Remember each kept record's lease, for `ack`; leases are extended from now on."""
        for k, record in enumerate(kept):
            previous = tuple(handout.previous.get(k, ()))
            self._holdings.add(record, Receipt(index, handout.tokens[k], previous))
        self._pump.start()

    def _return(self, index: int, handout: Handout) -> Any:
        return self._shards[index].give_back.remote(None, handout.tokens)

    def _drained(self) -> Drained:
        return Drained(f"queue {self.name}: settle what {self.consumer} holds")

    # -- leases ------------------------------------------------------------------------------
    def ack(self, records: Sequence[Any]) -> None:
        """These records (got through this consumer) are safely downstream. Sent in the
        background; unknown records are ignored."""
        receipts = [r for r in (self._holdings.pop(record) for record in records) if r]
        if receipts:
            self._pump.ack(receipts)

    def flush_acks(self, timeout_s: float = 30.0) -> None:
        """Wait until every acknowledgement made so far has reached its shard."""
        self._pump.flush(timeout_s)

    def previous_consumers(self, record: Any) -> tuple[str, ...]:
        """Who had this held record before (empty unless it is a redelivery)."""
        receipt = self._holdings.receipt(record)
        return receipt.previous if receipt else ()

    def settle(self, timeout_s: float) -> None:
        """After Drained: wait until this consumer holds nothing (its other threads are
        finishing what it holds), then until its acknowledgements have arrived."""
        self._holdings.wait_empty(timeout_s)
        self.flush_acks()
