"""QueueConsumer: the one prefetching consumer of a leased queue client, for inference and writers.

A stage actor's loop must not wait on the queue or on the object store. A consumer thread does
both for it: it gets records from a consumer client (`ShardedQueue.as_consumer`, so they are
held under leases until the actor acknowledges them), reads their payloads with one `ray.get`
per step (one by one only when that fails, to find which records are unreadable), and hands
the actor's loop one item per record through a small hand-off, ending with the one
end-of-stream token (`EndOfStream`, carrying the error when the thread failed).

What the two stages do differently is a parameter, not a second loop:
- `refs_of`: which ObjectRefs a record's item needs (inference: the images; a writer: images
  and output), or None for a record that cannot be read;
- `prepare`: what the loop receives for a record (inference stages it into a slot, which may
  wait for a free one; a writer takes the arrays as they are);
- `bound`: an int N keeps at most N records taken and not yet `done()` (a writer's
  max_pending_batches); a callable says how many to ask for next (inference: its free slots
  per Q1 shard, `prepare` waiting for the slots themselves);
- `poll_s`: how long one get waits before the stop flag is looked at again (None: a get waits
  for data or end of stream);
- `on_drained`: what to do when only leases, some of them this consumer's, keep the queue open
  (default: wait up to poll_s for the actor's loop to acknowledge what it holds).

A get may answer from several shards at once, each up to the number asked for, so a bound N is
exceeded by at most num_shards - 1 records (peaknet_pipeline.budget counts that).
"""

from __future__ import annotations

import logging
import queue as queue_module
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import ray

from ..nvtx import nvtx_range
from .eos import EndOfStream
from .leased import LeasedConsumer
from .reader import Drained, Empty

log = logging.getLogger(__name__)

# A record's payloads, the exception that made them unreadable, or None (nothing to read).
Got = tuple | BaseException | None


def materialise(
    records: Sequence[Any],
    refs_of: Callable[[Any], Sequence[Any] | None],
    get: Callable[[list, float | None], list],
    timeout_s: float | None = None,
) -> list[Got]:
    """Each record's payloads, read together with one `get`; where that fails, each record's
    on its own, so that one unreadable record does not cost the others theirs."""
    refs = [refs_of(r) for r in records]
    usable = [i for i, r in enumerate(refs) if r is not None]
    got: list[Got] = [None] * len(records)
    try:
        values = iter(get([ref for i in usable for ref in refs[i]], timeout_s))
        for i in usable:
            got[i] = tuple(next(values) for _ in refs[i])
    except Exception:  # noqa: BLE001 - error path only: find which records are unreadable
        for i in usable:
            try:
                got[i] = tuple(get(list(refs[i]), timeout_s))
            except Exception as exc:  # noqa: BLE001 - the caller counts it, by its type
                got[i] = exc
    return got


def ray_get(refs: list, timeout_s: float | None) -> list:
    return ray.get(refs, timeout=timeout_s)


class QueueConsumer:
    """A thread that fetches ahead from `queue` (a consumer client) for one actor's loop,
    which reads with `get` and calls `done` once per record item it has finished with."""

    def __init__(
        self,
        queue: LeasedConsumer,
        refs_of: Callable[[Any], Sequence[Any] | None],
        bound: int | Callable[[], int],
        prepare: Callable[[Any, Got, float], Any] = lambda record, got, taken: (record, got),
        poll_s: float | None = None,
        on_drained: Callable[[], None] | None = None,
        fetch_timeout_s: float | None = None,
        nvtx: bool = False,
        get_range: str = "",
        name: str = "consumer",
        get: Callable[[list, float | None], list] = ray_get,
    ) -> None:
        self.queue = queue
        self._refs_of, self._bound, self._prepare = refs_of, bound, prepare
        self._poll_s, self._fetch_timeout_s = poll_s, fetch_timeout_s
        self._on_drained = on_drained or (lambda: queue.settle(poll_s or 0.0))
        self._nvtx, self._get_range, self._get = nvtx, get_range, get
        self._items: deque = deque()  # prepared items, Settle-like markers, the end token
        self._cond = threading.Condition()
        self._pending = 0  # records taken, not yet done()
        self.end: EndOfStream | None = None  # the token handed over last, once there is one
        self._stopping = False
        self._counts = {"batches": 0, "frames": 0, "bytes": 0, "wait_s": 0.0, "fetch_s": 0.0}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- the actor's side --------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Take nothing more; the thread hands over the end token and ends."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self) -> None:
        self._thread.join()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next item (the end token last); raises queue.Empty if none is ready when not
        `block`, or within `timeout` seconds (so it reads like the queue.Queue it replaces; a
        writer wakes on a quiet queue to close its DAQ runs on time)."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout if block else 0):
                raise queue_module.Empty
            return self._items.popleft()

    def put(self, item: Any) -> None:
        """Hand the actor's loop an item of the actor's own (a writer's Settle), in order."""
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def done(self) -> None:
        """The loop finished with one record's item: room for one more under an int bound."""
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    def qsize(self) -> int:
        with self._cond:
            return len(self._items)

    def counts(self) -> dict[str, Any]:
        """Records taken (batches, frames, bytes), time waiting on the queue (wait_s, drained
        settling included) and reading payloads (fetch_s), and records not yet done."""
        with self._cond:
            return {**self._counts, "pending": self._pending}

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        end = EndOfStream("stopped")
        try:
            while (want := self._room()) > 0:
                records = self._take(want)
                if not records:
                    continue
                taken = time.perf_counter()
                with nvtx_range("fetch", self._nvtx):
                    got = materialise(records, self._refs_of, self._get, self._fetch_timeout_s)
                self._count(fetch_s=time.perf_counter() - taken)
                for record, payloads in zip(records, got):
                    item = self._prepare(record, payloads, taken)
                    if item is None:
                        self.done()  # nothing for the loop (a rejected record)
                    else:
                        self.put(item)
        except EndOfStream as exc:
            end = exc
        except BaseException as exc:  # noqa: BLE001 - handed to the loop with the end token
            log.error("%s stopped: %s", self._thread.name, exc)
            end = EndOfStream(f"{self._thread.name} failed: {exc}", error=exc)
        self.end = end
        self.put(end)

    def _room(self) -> int:
        """How many records to ask for (waiting for room under an int bound); 0 once stopped."""
        if callable(self._bound):
            return 0 if self._stopping else max(1, self._bound())
        with self._cond:
            self._cond.wait_for(lambda: self._pending < self._bound or self._stopping)
            return 0 if self._stopping else self._bound - self._pending

    def _take(self, want: int) -> list:
        """Records from the queue ([] when there were none to take yet); raises EndOfStream
        at its end."""
        t0 = time.perf_counter()
        try:
            with nvtx_range(self._get_range, self._nvtx and bool(self._get_range)):
                records = self.queue.get_many(want, timeout=self._poll_s)
        except Drained:  # only leases keep the queue open, ours among them: settle them
            self._on_drained()
            return []
        except Empty:
            return []
        finally:
            self._count(wait_s=time.perf_counter() - t0)
        with self._cond:
            self._pending += len(records)
        self._count(
            batches=len(records),
            frames=sum(getattr(r, "size", 0) for r in records),
            bytes=sum(getattr(r, "nbytes", 0) for r in records),
        )
        return records

    def _count(self, **amounts: float) -> None:
        with self._cond:
            for key, amount in amounts.items():
                self._counts[key] += amount
