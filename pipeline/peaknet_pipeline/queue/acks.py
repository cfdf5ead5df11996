"""A consumer's side of its leases: which records it holds, acknowledging them, keeping them.

`Holdings` remembers, for each record a consumer holds under a lease, the shard and the lease
token (and who had the record before: a redelivery). `AckPump` is the consumer's own thread:
it sends acknowledgements (coalesced for ACK_DELAY_S, one fire-and-forget call per shard, so a
consumer never waits on an ack and a loop of single-record gets does not double its calls) and
extends the consumer's leases every lease_s / 3 on each shard where it holds some, however
long one batch takes (a slow but healthy consumer keeps its records).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any, NamedTuple

import ray

log = logging.getLogger(__name__)

ACK_DELAY_S = 0.02  # acknowledgements wait this long for company before they are sent


class Receipt(NamedTuple):
    shard: int
    token: int
    previous: tuple[str, ...]  # consumers that had the record before (a redelivery)


class Holdings:
    """Records held under leases, by object identity (a consumer acknowledges the record
    object it got; holding it here keeps that identity valid until then)."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[Any, Receipt]] = {}
        self._lock = threading.Lock()
        self._emptied = threading.Condition(self._lock)

    def add(self, record: Any, receipt: Receipt) -> None:
        with self._lock:
            self._held[id(record)] = (record, receipt)

    def pop(self, record: Any) -> Receipt | None:
        with self._lock:
            found = self._held.pop(id(record), None)
            if not self._held:
                self._emptied.notify_all()
        return None if found is None else found[1]

    def wait_empty(self, timeout_s: float) -> bool:
        """Wait until nothing is held (another thread acknowledges the last record)."""
        with self._lock:
            return self._emptied.wait_for(lambda: not self._held, timeout_s)

    def receipt(self, record: Any) -> Receipt | None:
        with self._lock:
            found = self._held.get(id(record))
        return None if found is None else found[1]

    def per_shard(self) -> dict[int, int]:
        with self._lock:
            counts: dict[int, int] = defaultdict(int)
            for _, receipt in self._held.values():
                counts[receipt.shard] += 1
            return dict(counts)

    def __len__(self) -> int:
        return len(self._held)


class AckPump:
    """The consumer's thread for acknowledgements and lease extensions (started on first use)."""

    def __init__(self, shards: list[Any], consumer: str, holdings: Holdings, lease_s: float):
        self.shards, self.consumer, self.holdings = shards, consumer, holdings
        self.extend_every_s = lease_s / 3
        self._pending: dict[int, list[int]] = defaultdict(list)
        self._cond = threading.Condition()
        self._sent: list[Any] = []  # ack calls not known to have arrived yet
        self._thread: threading.Thread | None = None
        self._armed = False  # acks are pending and the thread has been woken for them

    def ack(self, receipts: list[Receipt]) -> None:
        with self._cond:
            for receipt in receipts:
                self._pending[receipt.shard].append(receipt.token)
            if not self._armed:  # one wake-up per ACK_DELAY_S at most, not one per ack
                self._armed = True
                self._start()
                self._cond.notify()

    def take(self, index: int) -> list[int]:
        """The acks pending for shard `index`, for the caller to send with its next call."""
        with self._cond:
            return self._pending.pop(index, [])

    def flush(self, timeout_s: float = 30.0) -> None:
        """Send what is pending now and wait until every ack sent so far has arrived."""
        with self._cond:
            self._send()
            sent, self._sent = self._sent, []
        if sent:
            ray.wait(sent, num_returns=len(sent), timeout=timeout_s)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="acks", daemon=True)
            self._thread.start()

    def start(self) -> None:
        """Begin extending leases (the first lease get calls this)."""
        with self._cond:
            self._start()

    def _run(self) -> None:
        next_extend = time.monotonic() + self.extend_every_s
        while True:
            with self._cond:
                self._cond.wait(max(0.0, next_extend - time.monotonic()))
                if self._armed:
                    self._cond.wait(ACK_DELAY_S)  # more acks join, or a get takes them along
                    self._armed = False
                    self._send()
            if time.monotonic() >= next_extend:
                next_extend = time.monotonic() + self.extend_every_s
                self._extend()

    def _send(self) -> None:
        """One ack call per shard with pending tokens (lock held); the calls are not waited
        on, only pruned once done."""
        for index, tokens in self._pending.items():
            self._sent.append(self.shards[index].ack.remote(tokens))
        self._pending.clear()
        if len(self._sent) > 64:
            done, self._sent = ray.wait(self._sent, num_returns=len(self._sent), timeout=0)

    def _extend(self) -> None:
        for index in self.holdings.per_shard():
            try:
                self.shards[index].extend.remote(self.consumer)
            except Exception as exc:  # noqa: BLE001 - a shard gone: the run is ending
                log.debug("extending leases on shard %d failed: %s", index, exc)
