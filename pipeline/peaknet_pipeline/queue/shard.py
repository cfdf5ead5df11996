"""One shard of a ShardedQueue: a threaded actor holding a bounded FIFO of small records.

Why threads and not asyncio (DESIGN.md says async actors): a shard does little else than
answer calls, and on Ray a call into a threaded actor costs less than one into an async actor.
On 2 cores, no-op actors called the way bench/queue_bench.py calls a shard answered about
1,200 records/s threaded against 900 async, and ray.util.queue about 500: async alone left too
little room for the 1.5x single-record target. A blocked `put` or `get` waits on a condition
variable, so an idle shard uses no CPU and a `put` wakes a waiting `get` directly.

A blocked call holds one of the actor's threads. The shard therefore allows at most
`max_blocked_calls` of them at once and keeps RESERVED_THREADS more for calls that never block
(a put with room, a get with data, close, withdraw, stats): those always find a thread, so
waiting callers cannot starve the calls that would release them. One call too many fails with
TooManyBlockedCalls naming the limit, instead of stalling the queue.

Consumers that acknowledge (`lease` instead of `get`) hold records under leases (leases.py):
the shard keeps each record until it is acknowledged, and queues it again at the front when
its consumer is released (seen dead by the driver) or its lease expires. End of stream waits
for every lease to be settled.

Records hold ObjectRefs, never pixels. What a put may add, in what order, and the handover of
its payload from the producer to the shard, are admission.py's (QueueShard's base class).

Given `metrics_labels`, a shard records its own depth, bytes, puts, gets and blocked time as
Ray metrics once a second, from a thread of its own (monitor.metrics), never in the put/get
path.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from ..monitor.metrics import Recorder, shard_readings
from .admission import Admission
from .leases import Entry, LeaseBook
from .status import (
    DRAINED,
    EMPTY,
    EOS,
    OK,
    RELEASED,
    ShardStatus,
    TooManyBlockedCalls,
)

# A get runs within its slice (reader.WAIT_SLICE_S = 30 s) of being submitted: a withdrawal kept
# this long has met its get, or that get already returned.
WITHDRAWN_KEEP_S = 120.0
# Threads beyond max_blocked_calls, for the calls that never block.
RESERVED_THREADS = 16
# A lease not extended for this long comes back (consumers extend every third of it).
LEASE_S = 60.0
# Deliveries of a record before it goes to the dead letters instead of being queued again.
MAX_DELIVERIES = 3


class QueueShard(Admission):
    """Bounded FIFO (items and bytes) with producer registration (admission.py), end of
    stream and leases.

    Run it with `max_concurrency = max_blocked_calls + RESERVED_THREADS` (ShardedQueue.create
    does). Every method may run on any thread; one lock guards all state.
    """

    def __init__(
        self,
        queue_name: str,
        index: int,
        num_shards: int,
        capacity_items: int,
        capacity_bytes: int,
        max_blocked_calls: int,
        lease_s: float = LEASE_S,
        max_deliveries: int = MAX_DELIVERIES,
        metrics_labels: Mapping[str, str] | None = None,
    ) -> None:
        self._info = {
            "queue": queue_name,
            "index": index,
            "num_shards": num_shards,
            "capacity_items": capacity_items,
            "capacity_bytes": capacity_bytes,
            "max_blocked_calls": max_blocked_calls,
            "lease_s": lease_s,
            "max_deliveries": max_deliveries,
        }
        self._items: deque[Entry] = deque()
        self._bytes = 0
        lock = threading.Lock()
        super().__init__(lock)
        self._not_empty = threading.Condition(lock)
        self._not_full = threading.Condition(lock)
        self._blocked = 0
        self._waiting: set[str] = set()
        self._withdrawn: dict[str, float] = {}  # ticket -> when withdrawn
        self._stats = {"puts": 0, "gets": 0, "put_blocked_s": 0.0, "get_blocked_s": 0.0}
        self._max_depth = 0
        self._book = LeaseBook(lease_s, max_deliveries)
        self._leases_changed = threading.Condition(self._lock)  # the reaper's wake-up
        threading.Thread(target=self._reap_expired, name="lease-reaper", daemon=True).start()
        if metrics_labels is not None:
            labels = {**metrics_labels, "shard": str(index)}
            Recorder(labels, lambda: shard_readings(self.stats())).start()

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    # -- end of stream ---------------------------------------------------------------------
    def _end_of_stream(self) -> bool:
        """Nothing queued or arriving, and nothing leased that may come back (a seal ends
        the stream whatever is leased)."""
        if self._items or self._fetching[0]:
            return False
        return self._sealed or (self._all_closed() and not self._book.outstanding())

    def _drained_for(self, consumer: str | None) -> bool:
        """Only leases keep the stream open, and `consumer` holds some of them."""
        if consumer is None or self._items or self._fetching[0] or not self._all_closed():
            return False
        return self._book.holds(consumer)

    def _wake_all(self) -> None:
        for cond in (self._not_empty, self._not_full, self._in_order):
            cond.notify_all()

    # -- data -------------------------------------------------------------------------------
    def _has_room(self, nbytes: int) -> bool:
        items, fetching_bytes = len(self._items) + self._fetching[0], self._fetching[1]
        if not items:
            return True  # a record larger than the byte budget still passes, alone
        return (
            items < self._info["capacity_items"]
            and self._bytes + fetching_bytes + nbytes <= self._info["capacity_bytes"]
        )

    def _wait(
        self,
        cond: threading.Condition,
        ready: Callable[[], bool],
        timeout: float | None,
        stat: str | None,
    ) -> bool:
        """Wait (lock held) until ready(); False on timeout. Adds the time to `stat`."""
        if ready():
            return True
        if timeout is not None and timeout <= 0:
            return False
        self._enter_blocked()
        t0 = time.perf_counter()
        try:
            return cond.wait_for(ready, timeout)
        finally:
            self._blocked -= 1
            if stat:
                self._stats[stat] += time.perf_counter() - t0

    def _enter_blocked(self) -> None:
        if self._blocked >= self._info["max_blocked_calls"]:
            raise TooManyBlockedCalls(
                f"queue {self._info['queue']} shard {self._info['index']}: "
                f"{self._blocked} puts/gets already blocked, the most it allows "
                "(queue.<q1|q2>.max_blocked_calls_per_shard); raise it for this many "
                "producers and consumers, or add shards"
            )
        self._blocked += 1

    def _store(self, entry: Entry) -> None:
        """An admitted record joins the FIFO (lock held)."""
        self._items.append(entry)
        self._bytes += entry.nbytes
        self._stats["puts"] += 1
        self._max_depth = max(self._max_depth, len(self._items))
        self._not_empty.notify()  # every waiting get wants any record: wake one per record

    def get(
        self,
        max_items: int = 1,
        timeout: float | None = None,
        ticket: str | None = None,
        count_wait: bool = True,
    ) -> tuple[ShardStatus, list]:
        """Up to max_items records, oldest first, handed over for good (no lease); (EMPTY, [])
        on timeout or when the caller withdrew `ticket`, (EOS, []) when the stream is over.

        A consumer waiting on several shards withdraws the other waits once one answered.
        Withdrawal takes the same lock, so a get either returns its records or takes none;
        a withdrawal that arrives before its get (Ray does not order concurrent calls) is
        remembered, and that get returns at once. The wait counts in `get_blocked_s` when
        this get ended it (records or end of stream), or timed out with `count_wait`: one
        consumer waiting on several shards is counted once, not once per shard.
        """
        with self._lock:
            status, entries = self._take(max_items, timeout, ticket, count_wait, None)
            return status, [e.record for e in entries]

    def lease(
        self,
        consumer: str,
        max_items: int = 1,
        timeout: float | None = None,
        ticket: str | None = None,
        count_wait: bool = True,
        acks: list[int] | None = None,
    ) -> tuple[ShardStatus, list, list[int], dict[int, tuple[str, ...]]]:
        """As `get`, but the records stay this shard's until acknowledged: each is handed out
        under a lease of `consumer`. `acks` acknowledges earlier records first (a consumer's
        acks ride on its next get: no call of their own). Returns (status, records, tokens,
        {position: consumers that had it before} for redelivered records); status RELEASED
        once the driver released the consumer. A plain tuple: it serialises cheaply."""
        with self._lock:
            if acks:
                self._book.ack(acks)
            status, entries = self._take(max_items, timeout, ticket, count_wait, consumer)
            first = not self._book.outstanding()
            now = time.monotonic()
            tokens = [self._book.lease(e, consumer, now) for e in entries]
            if tokens and first:
                self._leases_changed.notify()
            previous = {i: e.consumers[:-1] for i, e in enumerate(entries) if e.deliveries > 1}
            return status, [e.record for e in entries], tokens, previous

    def _take(
        self,
        max_items: int,
        timeout: float | None,
        ticket: str | None,
        count_wait: bool,
        consumer: str | None,
    ) -> tuple[ShardStatus, list[Entry]]:
        """The get of `get` and `lease` (lock held)."""
        if ticket is not None:
            self._waiting.add(ticket)
        t0 = time.perf_counter()
        released = self._book.released
        try:
            ready = lambda: (  # noqa: E731
                bool(self._items)
                or self._end_of_stream()
                or ticket in self._withdrawn
                or consumer in released
                or self._drained_for(consumer)
            )
            timed_out = not self._wait(self._not_empty, ready, timeout, None)
        finally:
            self._waiting.discard(ticket)
        withdrawn = self._withdrawn.pop(ticket, None) is not None
        if count_wait if timed_out else not withdrawn:
            self._stats["get_blocked_s"] += time.perf_counter() - t0
        if consumer is not None and consumer in released:
            return RELEASED, []
        if timed_out:
            return EMPTY, []
        if withdrawn:
            if self._items:
                self._not_empty.notify()  # a wake-up meant for a record: pass it on
            return EMPTY, []
        if not self._items:
            return (EOS if self._end_of_stream() else DRAINED), []
        out = []
        while self._items and len(out) < max_items:
            entry = self._items.popleft()
            self._bytes -= entry.nbytes
            out.append(entry)
        self._stats["gets"] += len(out)
        if self._items:
            self._not_empty.notify()  # records remain: pass the wake-up on
        self._not_full.notify_all()
        return OK, out

    # -- leases -----------------------------------------------------------------------------
    def ack(self, tokens: list[int]) -> None:
        """These leased records are safely downstream: forget them."""
        with self._lock:
            if self._book.ack(tokens) and self._end_of_stream():
                self._not_empty.notify_all()  # the last lease settled: end of stream is due

    def extend(self, consumer: str) -> None:
        """The consumer is alive: its leases run for another lease_s."""
        with self._lock:
            self._book.extend(consumer, time.monotonic())

    def release_consumer(self, consumer: str) -> int:
        """The consumer is dead: its leased records go back to the front of the queue (or to
        the dead letters), its waiting gets return, and it gets nothing more. Returns how
        many records came back."""
        with self._lock:
            entries = self._book.release(consumer)
            self._requeue(entries)
            self._not_empty.notify_all()
            return len(entries)

    def resume_point(self, source: Any) -> tuple[int, int]:
        """For a source starting again: (its first sequence number of this shard's share not
        accepted, its highest accepted, -1 if none). Keys go to shard (crc32(source) + seq)
        mod num_shards, so this shard holds one residue class of each source's numbers."""
        n = self._info["num_shards"]
        first = (-zlib.crc32(str(source).encode()) + self._info["index"]) % n
        with self._lock:
            return self._seen.first_missing(source, n, first), self._seen.highest(source)

    def dead_letters(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._book.dead_letters)

    def _requeue(self, entries: list[Entry]) -> None:
        """Back to the front, oldest first (lock held)."""
        for entry in reversed(entries):
            self._items.appendleft(entry)
            self._bytes += entry.nbytes
        self._max_depth = max(self._max_depth, len(self._items))
        self._not_empty.notify(len(entries))

    def _reap_expired(self) -> None:
        """Queue again what expired leases held (a thread of its own, waiting on the lock's
        condition until the earliest deadline)."""
        with self._lock:
            while True:
                deadline = self._book.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._leases_changed.wait(timeout)
                expired = self._book.expire(time.monotonic())
                if expired:
                    self._requeue(expired)
                if self._end_of_stream():
                    self._not_empty.notify_all()

    def give_back(self, records: list[Any] | None = None, tokens: list[int] | None = None) -> None:
        """Return records a consumer took but cannot use (its wait failed elsewhere, or it got
        more than it asked for) to the front of the queue, oldest first, as if never taken:
        plain records, or leased ones by token."""
        with self._lock:
            if tokens is not None:
                entries = self._book.cancel(tokens)
            else:
                entries = [Entry(r, getattr(r, "nbytes", 0)) for r in records or []]
            self._requeue(entries)
            self._stats["gets"] -= len(entries)

    def withdraw(self, ticket: str) -> None:
        """Release the get waiting under `ticket`, or the one still to come.

        Tickets of gets that had already returned are forgotten after WITHDRAWN_KEEP_S.
        """
        with self._lock:
            now = time.monotonic()
            for old, when in list(self._withdrawn.items()):
                if now - when > WITHDRAWN_KEEP_S:
                    del self._withdrawn[old]
            self._withdrawn[ticket] = now
            if ticket in self._waiting:
                self._not_empty.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self._info,
                **self._stats,
                **self._admitted,
                "depth": len(self._items),
                "bytes": self._bytes,
                "max_depth": self._max_depth,
                "blocked_calls": self._blocked,
                "producers": len(self._owners),
                "closed_producers": len(self._closed),
                "end_of_stream": self._end_of_stream(),
                "leased": self._book.outstanding(),
                **self._book.stats,
            }
