"""Leases: a record handed to a consumer stays the shard's until the consumer acknowledges it.

A shard holds each record as an `Entry` while it is queued and while it is leased. A leased get
hands records out under a lease (consumer id, deadline). The consumer acknowledges a record
once its output is safely downstream (inference: its Result accepted by Q2; a writer: the
events in a closed file); only then does the shard forget it. A lease that is not acknowledged
comes back to the front of the shard, oldest first, when

- its consumer is released: the driver saw the actor die (Ray cannot tell a threaded actor that
  a caller died), or
- it expires: the consumer stopped extending its leases (a live consumer extends them every
  lease_s / 3 from its own thread, however long one batch takes, so a slow but healthy GPU is
  never robbed of its batch).

Every handing-out counts as a delivery. A record that comes back after `max_deliveries`
deliveries is not queued again: it goes to the dead letters (a poison batch that kills every
consumer it meets must not loop forever), which the run's report names (the newest
`DEAD_LETTERS_KEPT` of each shard: a service runs for days; `stats["dead_lettered"]` counts
them all, so the report says how many it no longer names). An entry remembers
the consumers that had it before, so a writer that receives a redelivered Result can check
what a dead writer already put in closed files.

`LeaseBook` is plain bookkeeping, used under the shard's lock; it never blocks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

DEAD_LETTERS_KEPT = 100  # dead letters a shard describes, the newest


def frames_of(record: Any) -> int:
    """Events in a record (a Batch's or a Result's size; 1 for anything else)."""
    return int(getattr(record, "size", 1))


@dataclass
class Entry:
    """A record in a shard: queued, or leased to a consumer."""

    record: Any
    nbytes: int
    deliveries: int = 0  # times handed out under a lease
    consumers: tuple[str, ...] = ()  # who had it, oldest first

    def describe(self) -> dict[str, Any]:
        """What the report says of a dead letter (the record's own key when it has one)."""
        key = getattr(self.record, "key", None)
        return {
            "record": list(key) if key is not None else repr(self.record)[:200],
            "deliveries": self.deliveries,
            "consumers": list(self.consumers),
        }


@dataclass
class Lease:
    entry: Entry
    consumer: str
    deadline: float


@dataclass
class LeaseBook:
    lease_s: float
    max_deliveries: int
    leases: dict[int, Lease] = field(default_factory=dict)  # token -> lease, in token order
    dead_letters: list[dict[str, Any]] = field(default_factory=list)  # the newest kept
    released: set[str] = field(default_factory=set)  # consumers known dead
    stats: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "acks",
                "redeliveries",
                "expired",
                "late_acks",
                "dead_lettered",
                "frames_acked",
                "frames_dead",
            ),
            0,
        )
    )
    _next: int = 0

    def lease(self, entry: Entry, consumer: str, now: float) -> int:
        """Hand `entry` to `consumer`; returns its token."""
        if entry.deliveries:
            self.stats["redeliveries"] += 1
        entry.deliveries += 1
        entry.consumers = (*entry.consumers, consumer)
        token, self._next = self._next, self._next + 1
        self.leases[token] = Lease(entry, consumer, now + self.lease_s)
        return token

    def ack(self, tokens: Iterable[int]) -> int:
        """Forget acknowledged records; a token no longer leased (expired or released, so its
        record may have gone to another consumer) counts as a late ack."""
        acked = 0
        for token in tokens:
            lease = self.leases.pop(token, None)
            if lease is None:
                self.stats["late_acks"] += 1
            else:
                acked += 1
                self.stats["frames_acked"] += frames_of(lease.entry.record)
        self.stats["acks"] += acked
        return acked

    def cancel(self, tokens: Iterable[int]) -> list[Entry]:
        """Take leases back as if never handed out (a consumer got more than it asked for)."""
        entries = []
        for token in sorted(tokens):
            lease = self.leases.pop(token, None)
            if lease is not None:
                lease.entry.deliveries -= 1
                lease.entry.consumers = lease.entry.consumers[:-1]
                entries.append(lease.entry)
        return entries

    def extend(self, consumer: str, now: float) -> None:
        for lease in self.leases.values():
            if lease.consumer == consumer:
                lease.deadline = now + self.lease_s

    def release(self, consumer: str) -> list[Entry]:
        """Every record leased to `consumer`, to queue again (oldest first); the consumer is
        known dead from now on."""
        self.released.add(consumer)
        return self._take(t for t, lease in self.leases.items() if lease.consumer == consumer)

    def expire(self, now: float) -> list[Entry]:
        """Records whose leases ran out, to queue again (oldest first)."""
        expired = [t for t, lease in self.leases.items() if lease.deadline <= now]
        self.stats["expired"] += len(expired)
        return self._take(expired)

    def next_deadline(self) -> float | None:
        return min((lease.deadline for lease in self.leases.values()), default=None)

    def outstanding(self) -> int:
        return len(self.leases)

    def holds(self, consumer: str) -> bool:
        return any(lease.consumer == consumer for lease in self.leases.values())

    def _take(self, tokens: Iterable[int]) -> list[Entry]:
        """Remove these leases; entries that may be delivered again, the rest dead-lettered."""
        again = []
        for token in sorted(tokens):
            entry = self.leases.pop(token).entry
            if entry.deliveries >= self.max_deliveries:
                self.dead_letters.append(entry.describe())
                del self.dead_letters[:-DEAD_LETTERS_KEPT]
                self.stats["dead_lettered"] += 1
                self.stats["frames_dead"] += frames_of(entry.record)
            else:
                again.append(entry)
        return again
