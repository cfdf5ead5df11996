"""When a failed actor is replaced: a budget per role, with back-off; and the record of each
failure (`RestartRecord`).

Pure bookkeeping (the driver does the restarting, supervision.py): the first restart of a role
waits `backoff_s`, each further one twice as long as the one before, and a role that has used
its budget (`runtime.restarts.<role>`) is not restarted again.

A service runs for days, so the records are bounded (`RestartLog`): the newest
`RESTARTS_KEPT` are kept, with a count of the older ones dropped (report.json's
`restarts_dropped`). A failure that was not recovered is never dropped (it decides the run's
end and exit code); of the recovered ones dropped only their actor ids stay, so the run's end
is still named by the unrecovered failures alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .config.models import RestartsConfig
from .placement import Role


@dataclass
class RestartBudget:
    cfg: RestartsConfig
    used: Counter = field(default_factory=Counter)

    def limit(self, role: Role) -> int:
        return getattr(self.cfg, role)

    def take(self, role: Role, now: float) -> float | None:
        """The time a replacement for a failed actor of `role` may start, or None when the
        role has no restarts left."""
        if self.used[role] >= self.limit(role):
            return None
        delay = self.cfg.backoff_s * 2 ** self.used[role]
        self.used[role] += 1
        return now + delay

    def left(self, role: Role) -> int:
        return self.limit(role) - self.used[role]


POOL_REPLACES = "replaced by the pool"  # report.json's `replacement` of a failed inference actor


@dataclass(frozen=True)
class RestartRecord:
    """One failure the supervisor handled, for report.json's `restarts` (as_dict: its keys
    and values as the README documents them) and for the run's exit code and end.

    How it was made good has one field per meaning: `replaced_by` the replacement's actor id
    (a writer or a source is replaced one for one), `pool_replaces` when the inference pool
    grows back to its count instead (no one actor replaces it), `retiring` when the actor was
    leaving anyway (scale-down: not replaced, nothing missing)."""

    role: Role
    actor_id: str
    error: str | None
    records_given_back: int  # its leased records that went back to the front of its queue
    replaced_by: str | None = None
    pool_replaces: bool = False
    retiring: bool = False
    resumed_at_seq: int | None = None  # a source's replacement: the batch it started from
    note: str | None = None  # what may be lost with it (a socket source)

    @property
    def recovered(self) -> bool:
        """The run does not miss this actor: it was replaced, or was leaving anyway. An
        unrecovered failure fails the run (exit code 1) and names how it ended."""
        return self.replaced_by is not None or self.pool_replaces or self.retiring

    def as_dict(self) -> dict[str, Any]:
        """report.json's entry: `id`, and `replacement` as the replacement's id, the words
        "replaced by the pool", or null; `note`, `retiring` and `resumed_at_seq` when set."""
        entry: dict[str, Any] = {
            "role": self.role,
            "id": self.actor_id,
            "error": self.error,
            "records_given_back": self.records_given_back,
            "replacement": self.replaced_by or (POOL_REPLACES if self.pool_replaces else None),
        }
        if self.note is not None:
            entry["note"] = self.note
        if self.retiring:
            entry["retiring"] = True
        if self.resumed_at_seq is not None:
            entry["resumed_at_seq"] = self.resumed_at_seq
        return entry


RESTARTS_KEPT = 100  # restart records a run keeps (report.json), the newest


class RestartLog:
    """The supervisor's failure records in the order they failed, at most `kept` of them: past
    that the oldest recovered one is dropped and counted (`dropped`). Reads like a list
    (iteration, len, index, item assignment) for the report and the driver."""

    def __init__(self, kept: int = RESTARTS_KEPT) -> None:
        self.kept = kept
        self.dropped = 0
        self.dropped_recovered_ids: set[str] = set()  # ids only: a few bytes a failure
        self._records: list[RestartRecord] = []

    def append(self, record: RestartRecord) -> None:
        self._records.append(record)
        while len(self._records) > self.kept:
            i = next((i for i, r in enumerate(self._records) if r.recovered), None)
            if i is None:
                break  # all unrecovered: each ended an actor for good; none may be dropped
            self.dropped_recovered_ids.add(self._records.pop(i).actor_id)
            self.dropped += 1

    def __iter__(self) -> Iterator[RestartRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> RestartRecord:
        return self._records[i]

    def __setitem__(self, i: int, record: RestartRecord) -> None:
        self._records[i] = record


def recovered_ids(records: Iterable[RestartRecord]) -> set[str]:
    """The ids of the actors whose failure was recovered (replaced, or retiring anyway), the
    dropped records' included when `records` is a RestartLog."""
    kept = {r.actor_id for r in records if r.recovered}
    return kept | getattr(records, "dropped_recovered_ids", set())
