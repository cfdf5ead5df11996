"""Producing into a ShardedQueue from an actor, so queued data outlives the producer.

An object belongs to the process that created it and dies with it. So a producer actor does
not `ray.put` its payload: it holds the payload in an `Outbox` and the shard that accepts the
record fetches it with `take_payload` before accepting the record. The fetched object is then
owned by the long-lived shard, and the producer can crash or restart without making queued
batches unreadable.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

from ..budget import DEFAULT_WINDOW
from .client import Full, ShardedQueue
from .status import CLOSED, FULL, LOST, SEALED

# Why the shard refused a put, by its status.
REFUSED = {
    FULL: "timed out",
    SEALED: "was sealed",
    CLOSED: "closed this producer",
    LOST: "could not fetch the payload",
}


class Outbox:
    """Payloads waiting for the shard that accepted their record to fetch them."""

    def __init__(self) -> None:
        self._items: dict[int, Any] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()

    def hold(self, payload: Any) -> int:
        with self._lock:
            key = next(self._keys)
            self._items[key] = payload
            return key

    def take(self, key: int) -> Any:
        with self._lock:
            return self._items.pop(key)

    def discard(self, key: int) -> None:
        with self._lock:
            self._items.pop(key, None)


class PayloadOwner:
    """Mixin for producer actor classes: the method shards call to fetch held payloads.

    The actor needs a free thread for this call while it produces (`max_concurrency` > 1).
    """

    outbox: Outbox

    def take_payload(self, key: int) -> tuple[Any, bool]:
        """The payload, and a small second return the shard waits on: once it resolves, the
        payload exists in the object store, owned by the shard (called with num_returns=2)."""
        return self.outbox.take(key), True


class QueueProducer:
    """One registered producer: puts with a bounded window in flight, then closes.

    Inside an actor that mixes in PayloadOwner, pass its `outbox`: payloads are then owned by
    the shards. Elsewhere (the driver, a test) payloads are `ray.put` by the caller.
    """

    def __init__(
        self,
        queue: ShardedQueue,
        producer_id: str,
        outbox: Outbox | None = None,
        max_in_flight: int = DEFAULT_WINDOW,
        on_accepted: Callable[[Any], None] | None = None,
    ) -> None:
        self.queue = queue
        self.producer_id = producer_id
        self.outbox = outbox
        self.max_in_flight = max_in_flight
        # Called with each record as soon as the queue has accepted it (from another thread).
        self.on_accepted = on_accepted
        self._in_flight: deque[tuple[Any, Any, int | None]] = deque()
        owner = ray.get_runtime_context().current_actor if outbox is not None else None
        queue.register_producer(producer_id, owner)

    def put(self, record: Any, payload: Any = None) -> None:
        """Queue `record` (with its payload array, if any); blocks while the window is full
        and the queue has no room. Keeps at most `max_in_flight` puts in flight, plus this one
        while it waits for the oldest. Raises Full, listing the records not placed, when the
        queue refused some (sealed for a hard stop, or this producer closed by the driver)."""
        key = None
        if payload is not None:
            if self.outbox is not None:
                key = self.outbox.hold(payload)
            else:
                record = record.with_payload(ray.put(payload))
        ref = self.queue.put_async(record, self.producer_id, key)
        if self.on_accepted is not None:  # as soon as the shard answers, not at the next put
            ref.future().add_done_callback(lambda done, rec=record: self._answered(done, rec))
        self._in_flight.append((ref, record, key))
        if len(self._in_flight) > self.max_in_flight:
            self._settle(len(self._in_flight) - self.max_in_flight)

    def _answered(self, done: Any, record: Any) -> None:
        """A put's answer arrived (in a thread of Ray's): tell on_accepted if it was taken."""
        try:
            accepted, _ = done.result()
        except Exception:  # noqa: BLE001 - a failed put raises in _settle, not here
            return
        if accepted:
            self.on_accepted(record)

    def _settle(self, count: int) -> None:
        """Wait for the `count` oldest puts; raise Full listing every one not placed."""
        settled = [self._in_flight.popleft() for _ in range(count)]
        outcomes = ray.get([ref for ref, _, _ in settled])
        rejected, reasons = [], set()
        for (_, record, key), (accepted, status) in zip(settled, outcomes):
            if accepted:
                continue
            if key is not None:
                self.outbox.discard(key)
            rejected.append(record)
            reasons.add(REFUSED[status])
        if rejected:
            why = " / ".join(sorted(reasons))
            raise Full(f"queue {self.queue.name}: {why}; {len(rejected)} not placed", rejected)

    def flush(self) -> None:
        """Wait until every record put so far is in the queue (Full lists those that are not)."""
        if self._in_flight:
            self._settle(len(self._in_flight))

    def close(self) -> None:
        """Flush (an accepted record's payload is already the queue's), then close for end
        of stream."""
        try:
            self.flush()
        finally:
            self.queue.close_producer(self.producer_id)
