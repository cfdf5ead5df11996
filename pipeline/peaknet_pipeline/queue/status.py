"""What a shard answers: its statuses, a get's `Handout`, and the error of one blocked call
too many. A module of its own because the shard, its admission and both clients read them."""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple


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


class Handout(NamedTuple):
    """A get's answer as the client reads it: records with their lease tokens (none for a
    plain get), and the consumers that had a redelivered record before, by position."""

    status: ShardStatus
    records: list[Any]
    tokens: list[int] = []
    previous: dict[int, tuple[str, ...]] = {}


class TooManyBlockedCalls(RuntimeError):
    """More puts/gets would be blocked on one shard at once than it has threads for."""
