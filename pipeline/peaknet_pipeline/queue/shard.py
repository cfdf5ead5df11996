"""One shard of a ShardedQueue: an async actor holding a bounded FIFO of small records.

Waiting costs nothing here: blocked `put`/`get` calls await an asyncio condition, so an idle
shard uses no CPU and a `put` wakes a waiting `get` directly. Records hold ObjectRefs, never
pixels. When a producer hands over a payload key, the shard asks the producer for the payload
itself (`take_payload`), which makes the shard the owner of that object: queued data then
survives the producer's death (see reference/ray-notes.md on ownership).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

OK, EMPTY, EOS, FULL, SEALED = "ok", "empty", "eos", "full", "sealed"
# A get runs within its lease (client.LEASE_S = 30 s) of being submitted: a withdrawal kept this
# long has met its get, or that get already returned.
WITHDRAWN_KEEP_S = 120.0


class QueueShard:
    """Bounded FIFO (items and bytes) with producer registration and end of stream."""

    def __init__(
        self, queue_name: str, index: int, num_shards: int, capacity_items: int, capacity_bytes: int
    ) -> None:
        self._info = {
            "queue": queue_name,
            "index": index,
            "num_shards": num_shards,
            "capacity_items": capacity_items,
            "capacity_bytes": capacity_bytes,
        }
        self._items: deque[tuple[Any, int]] = deque()
        self._bytes = 0
        self._lock = asyncio.Lock()
        self._not_empty = asyncio.Condition(self._lock)
        self._not_full = asyncio.Condition(self._lock)
        self._in_order = asyncio.Condition(self._lock)  # a producer's next numbered put may go
        self._next_order: dict[str, int] = {}
        self._owners: dict[str, Any] = {}
        self._closed: set[str] = set()
        self._sealed = False
        self._waiting: set[str] = set()
        self._withdrawn: dict[str, float] = {}  # ticket -> when withdrawn
        self._stats = {"puts": 0, "gets": 0, "put_blocked_s": 0.0, "get_blocked_s": 0.0}
        self._max_depth = 0

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    # -- producers and end of stream -------------------------------------------------------
    def _end_of_stream(self) -> bool:
        all_closed = bool(self._owners) and len(self._closed) >= len(self._owners)
        return not self._items and (self._sealed or all_closed)

    async def register(self, producer_id: str, owner: Any = None) -> None:
        async with self._lock:
            if producer_id in self._closed:
                raise ValueError(f"producer {producer_id!r} already closed on {self._info}")
            if owner is not None or producer_id not in self._owners:
                self._owners[producer_id] = owner

    async def close_producer(self, producer_id: str) -> None:
        async with self._lock:
            self._owners.setdefault(producer_id, None)
            self._closed.add(producer_id)
            self._not_empty.notify_all()

    async def seal(self) -> None:
        """End the stream whatever the producers say (the driver's hard stop)."""
        async with self._lock:
            self._sealed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    # -- data -------------------------------------------------------------------------------
    def _has_room(self, nbytes: int) -> bool:
        if not self._items:
            return True  # a record larger than the byte budget still passes, alone
        return (
            len(self._items) < self._info["capacity_items"]
            and self._bytes + nbytes <= self._info["capacity_bytes"]
        )

    async def _wait(self, cond: asyncio.Condition, ready, timeout: float | None) -> bool:
        """Wait (lock held) until ready(); False on timeout. Counts the time spent blocked."""
        if ready():
            return True
        if timeout is not None and timeout <= 0:
            return False
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(cond.wait_for(ready), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            key = "get_blocked_s" if cond is self._not_empty else "put_blocked_s"
            self._stats[key] += time.perf_counter() - t0

    async def put(
        self,
        records: list[Any],
        producer_id: str | None = None,
        payload_keys: list[int | None] | None = None,
        timeout: float | None = None,
        order: int | None = None,
    ) -> tuple[int, str]:
        """Append records in order, blocking while full.

        `order` numbers one producer's puts to this shard (0, 1, 2, ...). Ray may start an
        async actor's calls out of order, so a numbered put first waits for its predecessor:
        a producer keeping several puts in flight still gets FIFO per shard.
        Returns (accepted, status): status is OK, FULL (timed out) or SEALED (hard stop).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if producer_id in self._closed:
            raise ValueError(f"producer {producer_id!r} put after close")
        try:
            if order is not None:
                async with self._lock:
                    turn = lambda: self._next_order.get(producer_id, 0) >= order  # noqa: E731
                    if not await self._wait(self._in_order, turn, timeout):
                        return 0, FULL
            return await self._append(records, producer_id, payload_keys, deadline)
        finally:
            if order is not None:
                async with self._lock:
                    done = max(self._next_order.get(producer_id, 0), order + 1)
                    self._next_order[producer_id] = done
                    self._in_order.notify_all()

    async def _append(
        self,
        records: list[Any],
        producer_id: str | None,
        payload_keys: list[int | None] | None,
        deadline: float | None,
    ) -> tuple[int, str]:
        owner = self._owners.get(producer_id) if producer_id is not None else None
        for i, record in enumerate(records):
            nbytes = getattr(record, "nbytes", 0)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            async with self._lock:
                room = lambda: self._sealed or self._has_room(nbytes)  # noqa: E731, B023
                if not await self._wait(self._not_full, room, remaining):
                    return i, FULL
                if self._sealed:
                    return i, SEALED
                key = payload_keys[i] if payload_keys else None
                if key is not None:
                    record = record.with_payload(owner.take_payload.remote(key))
                self._items.append((record, nbytes))
                self._bytes += nbytes
                self._stats["puts"] += 1
                self._max_depth = max(self._max_depth, len(self._items))
                self._not_empty.notify_all()
        return len(records), OK

    async def get(
        self, max_items: int = 1, timeout: float | None = None, ticket: str | None = None
    ) -> tuple[str, list]:
        """Up to max_items records, oldest first; (EMPTY, []) on timeout or when the caller
        withdrew `ticket`, (EOS, []) when the stream is over.

        A consumer waiting on several shards withdraws the other waits once one answered.
        Withdrawal runs on this event loop, so a get either returns its records or takes none;
        a withdrawal that arrives before its get (Ray does not order an async actor's calls)
        is remembered, and that get returns at once.
        """
        async with self._lock:
            if ticket is not None:
                self._waiting.add(ticket)
            try:
                ready = lambda: (  # noqa: E731
                    bool(self._items) or self._end_of_stream() or ticket in self._withdrawn
                )
                if not await self._wait(self._not_empty, ready, timeout):
                    return EMPTY, []
            finally:
                self._waiting.discard(ticket)
            if self._withdrawn.pop(ticket, None) is not None:
                return EMPTY, []
            if not self._items:
                return EOS, []
            out = []
            while self._items and len(out) < max_items:
                record, nbytes = self._items.popleft()
                self._bytes -= nbytes
                out.append(record)
            self._stats["gets"] += len(out)
            self._not_full.notify_all()
            return OK, out

    async def withdraw(self, ticket: str) -> None:
        """Release the get waiting under `ticket`, or the one still to come.

        Tickets of gets that had already returned are forgotten after WITHDRAWN_KEEP_S.
        """
        async with self._lock:
            now = time.monotonic()
            for old, when in list(self._withdrawn.items()):
                if now - when > WITHDRAWN_KEEP_S:
                    del self._withdrawn[old]
            self._withdrawn[ticket] = now
            if ticket in self._waiting:
                self._not_empty.notify_all()

    def stats(self) -> dict[str, Any]:
        return {
            **self._info,
            **self._stats,
            "depth": len(self._items),
            "bytes": self._bytes,
            "max_depth": self._max_depth,
            "producers": len(self._owners),
            "closed_producers": len(self._closed),
            "end_of_stream": self._end_of_stream(),
        }
