"""Admission: what a shard lets in, in what order, and whose payload it takes over.

A put passes three rules before its record joins the shard's FIFO:

- ordering: Ray may start an actor's concurrent calls out of order, so a producer numbers its
  puts to each shard (`PutRequest.order`) and a numbered put waits for its predecessor, however
  long; a successor never overtakes it (a seal, or closing the producer, releases the wait);
- de-duplication: a keyed record, (source id, sequence number), is accepted once (seen.py); a
  copy is counted, dropped and answered as accepted, so a batch a restarted source sends again,
  or a Result made twice, is queued once;
- payload handover: when a producer hands over a payload key, the shard asks the producer for
  the payload itself (`take_payload`), which makes the shard the owner of that object, and
  accepts the record only once the producer has answered: an accepted record's data then
  survives the producer process's death (see reference/ray-notes.md). The bytes stay in the
  object store of the producer's node, so losing that whole node still loses them.

`Admission` is QueueShard's base class: the put side of one object under one lock. It keeps the
producers (registered, closed, their actor handles), their put order, the accepted keys and the
records whose payload is on its way. Of the rest of the shard it uses the lock and its
`_not_full` condition, waits through `_wait` (which counts blocked calls), and hands each
accepted record to the shard's FIFO with `_store`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import ray

from .leases import Entry, frames_of
from .seen import SeenKeys
from .status import CLOSED, FULL, LOST, OK, SEALED, ShardStatus

# How often a shard waiting for a producer to hand over a payload looks for a seal.
SEAL_CHECK_S = 0.5


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


class Admission:
    """The put side of a QueueShard (its base class); every method runs under `lock`."""

    # Provided by the shard.
    _info: dict[str, Any]
    _not_full: threading.Condition
    _blocked: int
    _wait: Callable[[threading.Condition, Callable[[], bool], float | None, str | None], bool]
    _enter_blocked: Callable[[], None]
    _has_room: Callable[[int], bool]
    _store: Callable[[Entry], None]
    _wake_all: Callable[[], None]

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._in_order = threading.Condition(lock)  # a producer's next numbered put may go
        self._next_order: dict[str, int] = {}
        self._owners: dict[str, Any] = {}  # producer -> its actor (None: no payload handover)
        self._closed: set[str] = set()
        self._sealed = False
        self._seen = SeenKeys()  # keys of accepted records: a copy is dropped
        self._fetching = [0, 0]  # records (and their bytes) accepted once their payload arrives
        # Copies dropped, and events of the records accepted (copies not counted).
        self._admitted = {"duplicates_dropped": 0, "frames_in": 0}

    # -- producers ---------------------------------------------------------------------------
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

    def _all_closed(self) -> bool:
        return bool(self._owners) and len(self._closed) >= len(self._owners)

    def _refusal(self, producer_id: str | None) -> ShardStatus | None:
        """Why a put must stop now, if it must."""
        if self._sealed:
            return SEALED
        return CLOSED if producer_id in self._closed else None

    # -- put ---------------------------------------------------------------------------------
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
            self._admitted["frames_in"] += frames_of(record)
            self._store(Entry(record, nbytes))
        return len(records), OK

    def _duplicate(
        self, record: Any, producer_id: str | None, payload_keys: list | None, i: int
    ) -> bool:
        """A copy of an accepted key: counted and dropped (accepted, as far as the producer
        is concerned); its payload, if the producer holds one, is released unread."""
        key = getattr(record, "key", None)
        if key is None or key not in self._seen:
            return False
        self._admitted["duplicates_dropped"] += 1
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
