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

Records hold ObjectRefs, never pixels. When a producer hands over a payload key, the shard asks
the producer for the payload itself (`take_payload`), which makes the shard the owner of that
object, and accepts the record only once the producer has answered: an accepted record's data
then survives the producer process's death (see reference/ray-notes.md). The bytes stay in the
object store of the producer's node, so losing that whole node still loses them.

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
from enum import Enum
from typing import Any, NamedTuple

from .leases import Entry, LeaseBook, frames_of
from .seen import SeenKeys


class ShardStatus(str, Enum):
    """What a shard answers with a get's records (OK, EMPTY, EOS, DRAINED, RELEASED) or a
    put's count (OK, FULL, SEALED, CLOSED, LOST). A `str`, so it compares and prints as its
    value ("eos") wherever it is read."""

    OK = "ok"
    EMPTY = "empty"  # a get timed out, or its caller withdrew it: the stream is not over
    EOS = "eos"  # the stream is over: nothing queued or leased, every producer closed
    # The stream is over but for leases, some of them the caller's: it should settle what it
    # holds (a writer closes its file) before end of stream can come.
    DRAINED = "drained"
    RELEASED = "released"  # a lease get of a consumer the driver released: it must stop
    # Why a put was not (wholly) accepted: timed out, hard stop, its producer was closed (by
    # the driver, on behalf of a failed producer), or the producer died before handing its
    # payload over.
    FULL = "full"
    SEALED = "sealed"
    CLOSED = "closed"
    LOST = "lost"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# The members by their short names, as the shard's code and its callers read them.
OK, EMPTY, EOS, DRAINED, RELEASED = (
    ShardStatus.OK,
    ShardStatus.EMPTY,
    ShardStatus.EOS,
    ShardStatus.DRAINED,
    ShardStatus.RELEASED,
)
FULL, SEALED, CLOSED, LOST = (
    ShardStatus.FULL,
    ShardStatus.SEALED,
    ShardStatus.CLOSED,
    ShardStatus.LOST,
)
# A get runs within its lease (client.WAIT_SLICE_S = 30 s) of being submitted: a withdrawal kept this
# long has met its get, or that get already returned.
WITHDRAWN_KEEP_S = 120.0
# Threads beyond max_blocked_calls, for the calls that never block.
RESERVED_THREADS = 16
# How often a shard waiting for a producer to hand over a payload looks for a seal.
SEAL_CHECK_S = 0.5
# A lease not extended for this long comes back (consumers extend every third of it).
LEASE_S = 60.0
# Deliveries of a record before it goes to the dead letters instead of being queued again.
MAX_DELIVERIES = 3


class PutRequest(NamedTuple):
    """The arguments of one `QueueShard.put`, sent as one argument: Ray serialises each
    argument of a call on its own, and one small tuple costs a put less than five.

    `timeout` bounds the wait for room. `order` numbers one producer's puts to this shard
    (0, 1, 2, ...); a numbered put always waits for its predecessor, however long, so that a
    successor can never overtake it (a seal or closing the producer releases the wait).
    """

    records: list[Any]
    producer_id: str | None = None
    payload_keys: list[int | None] | None = None
    timeout: float | None = None
    order: int | None = None


class Handout(NamedTuple):
    """A get's answer as the client reads it: records with their lease tokens (none for a
    plain get), and the consumers that had a redelivered record before, by position."""

    status: ShardStatus
    records: list[Any]
    tokens: list[int] = []
    previous: dict[int, tuple[str, ...]] = {}


class TooManyBlockedCalls(RuntimeError):
    """More puts/gets would be blocked on one shard at once than it has threads for."""


class QueueShard:
    """Bounded FIFO (items and bytes) with producer registration and end of stream.

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
        self._fetching = [0, 0]  # records (and their bytes) accepted once their payload arrives
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._in_order = threading.Condition(self._lock)  # a producer's next numbered put may go
        self._next_order: dict[str, int] = {}
        self._owners: dict[str, Any] = {}
        self._closed: set[str] = set()
        self._sealed = False
        self._blocked = 0
        self._waiting: set[str] = set()
        self._withdrawn: dict[str, float] = {}  # ticket -> when withdrawn
        self._stats = {"puts": 0, "gets": 0, "put_blocked_s": 0.0, "get_blocked_s": 0.0}
        self._max_depth = 0
        self._book = LeaseBook(lease_s, max_deliveries)
        self._seen = SeenKeys()  # keys of accepted records: a copy is dropped
        self._stats["duplicates_dropped"] = 0
        self._stats["frames_in"] = 0  # events of the records accepted (copies not counted)
        self._leases_changed = threading.Condition(self._lock)  # the reaper's wake-up
        threading.Thread(target=self._reap_expired, name="lease-reaper", daemon=True).start()
        if metrics_labels is not None:
            from ..monitor.metrics import Recorder, shard_readings

            labels = {**metrics_labels, "shard": str(index)}
            Recorder(labels, lambda: shard_readings(self.stats())).start()

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    # -- producers and end of stream -------------------------------------------------------
    def _end_of_stream(self) -> bool:
        """Nothing queued or arriving, and nothing leased that may come back (a seal ends
        the stream whatever is leased)."""
        if self._items or self._fetching[0]:
            return False
        return self._sealed or (self._all_closed() and not self._book.outstanding())

    def _all_closed(self) -> bool:
        return bool(self._owners) and len(self._closed) >= len(self._owners)

    def _drained_for(self, consumer: str | None) -> bool:
        """Only leases keep the stream open, and `consumer` holds some of them."""
        if consumer is None or self._items or self._fetching[0] or not self._all_closed():
            return False
        return self._book.holds(consumer)

    def register(self, producer_id: str, owner: Any = None) -> None:
        with self._lock:
            if producer_id in self._closed:
                raise ValueError(f"producer {producer_id!r} already closed on {self._info}")
            if owner is not None or producer_id not in self._owners:
                self._owners[producer_id] = owner

    def close_producer(self, producer_id: str) -> None:
        """Nothing more from this producer: its puts still waiting here are refused (CLOSED),
        so end of stream can never be followed by a record."""
        with self._lock:
            self._owners.setdefault(producer_id, None)
            self._closed.add(producer_id)
            self._wake_all()

    def seal(self) -> None:
        """End the stream whatever the producers say (the driver's hard stop)."""
        with self._lock:
            self._sealed = True
            self._wake_all()

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

    def put(self, request: PutRequest) -> tuple[int, ShardStatus]:
        """Append `request.records` in order, blocking while full (up to `request.timeout`).

        Ray may start an actor's concurrent calls out of order, so a numbered put first waits
        for its predecessor: a producer keeping several puts in flight still gets FIFO per
        shard. Returns (accepted, status): status OK, or why the rest was refused (FULL,
        SEALED, CLOSED, LOST).
        """
        records, producer_id, payload_keys, timeout, order = request
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if producer_id in self._closed:
                raise ValueError(f"producer {producer_id!r} put after close")
            if order is None:
                return self._append(records, producer_id, payload_keys, deadline)
            turn = lambda: (  # noqa: E731
                self._refusal(producer_id) or self._next_order.get(producer_id, 0) >= order
            )
            # If this wait fails (TooManyBlockedCalls) the turn is not passed on, so no
            # successor can overtake; closing the failed producer releases them.
            self._wait(self._in_order, turn, None, None)
            try:
                return self._append(records, producer_id, payload_keys, deadline)
            finally:
                self._next_order[producer_id] = max(self._next_order.get(producer_id, 0), order + 1)
                self._in_order.notify_all()

    def _refusal(self, producer_id: str | None) -> ShardStatus | None:
        """Why a put must stop now, if it must."""
        if self._sealed:
            return SEALED
        return CLOSED if producer_id in self._closed else None

    def _append(
        self,
        records: list[Any],
        producer_id: str | None,
        payload_keys: list[int | None] | None,
        deadline: float | None,
    ) -> tuple[int, ShardStatus]:
        """Append under the lock, waiting for room record by record."""
        for i, record in enumerate(records):
            nbytes = getattr(record, "nbytes", 0)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            room = lambda: self._refusal(producer_id) or self._has_room(nbytes)  # noqa: E731, B023
            if not self._wait(self._not_full, room, remaining, "put_blocked_s"):
                return i, FULL
            if refusal := self._refusal(producer_id):
                return i, refusal
            if self._duplicate(record, producer_id, payload_keys, i):
                continue
            key = payload_keys[i] if payload_keys else None
            if key is not None:
                record = self._fetch_payload(record, producer_id, key, nbytes)
                if self._sealed:
                    return i, SEALED
                if record is None:
                    return i, LOST
                if self._duplicate(record, None, None, i):  # a copy arrived meanwhile
                    continue
            if getattr(record, "key", None) is not None:
                self._seen.add(record.key)
            self._items.append(Entry(record, nbytes))
            self._stats["frames_in"] += frames_of(record)
            self._bytes += nbytes
            self._stats["puts"] += 1
            self._max_depth = max(self._max_depth, len(self._items))
            self._not_empty.notify()  # every waiting get wants any record: wake one per record
        return len(records), OK

    def _duplicate(
        self, record: Any, producer_id: str | None, payload_keys: list | None, i: int
    ) -> bool:
        """A copy of an accepted key: counted and dropped (accepted, as far as the producer
        is concerned); its payload, if the producer holds one, is released unread."""
        key = getattr(record, "key", None)
        if key is None or key not in self._seen:
            return False
        self._stats["duplicates_dropped"] += 1
        held = payload_keys[i] if payload_keys else None
        owner = self._owners.get(producer_id)
        if held is not None and owner is not None:
            owner.take_payload.remote(held)  # frees the producer's outbox; the ref is dropped
        return True

    def _fetch_payload(self, record: Any, producer_id: str, key: int, nbytes: int) -> Any:
        """`record` pointing at its payload, now owned by this shard; None if the producer
        died before handing it over, or the queue was sealed meanwhile (a producer that does
        not answer cannot hold up a hard stop). The lock is released while the producer
        answers; the record's room stays reserved and end of stream waits for it."""
        import ray

        owner = self._owners.get(producer_id)
        if owner is None:
            raise ValueError(f"producer {producer_id!r} hands over payloads but has no owner")
        self._enter_blocked()
        self._fetching[0] += 1
        self._fetching[1] += nbytes
        self._lock.release()
        try:
            payload, handed_over = owner.take_payload.options(num_returns=2).remote(key)
            while not ray.wait([handed_over], timeout=SEAL_CHECK_S)[0]:
                if self._sealed:  # a bool read needs no lock
                    return None
            ray.get(handed_over)
            return record.with_payload(payload)
        except ray.exceptions.RayError:
            return None
        finally:
            self._lock.acquire()
            self._blocked -= 1
            self._fetching[0] -= 1
            self._fetching[1] -= nbytes
            self._wake_all()  # room, or end of stream, may be due now

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
