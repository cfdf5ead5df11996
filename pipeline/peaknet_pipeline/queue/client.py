"""ShardedQueue: the client of N named shard actors, read like Python's `queue.Queue`.

Producers place records round-robin; consumers take from a home shard first and, when it is
empty, wait on every shard at once (one blocking call per shard, no sleeps, no polling loop),
so a consumer wakes as soon as any shard has data and shard 0 is not favoured. End of stream is
part of the queue: when every registered producer has closed and all shards are empty,
`get` raises `EndOfStream`.
"""

from __future__ import annotations

import atexit
import itertools
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from .shard import EOS, RESERVED_THREADS, PutRequest, QueueShard

# A blocking shard call returns at least this often, so a consumer that died while waiting
# leaves no call behind for longer than this.
LEASE_S = 30.0
# An interrupted consumer waits this long at most to put back records it had taken.
GIVE_BACK_TIMEOUT_S = 10.0


class Empty(Exception):
    """No record arrived within the timeout (the stream is not over)."""


class Full(Exception):
    """Records could not be placed within the timeout; `rejected` lists them, in order."""

    def __init__(self, message: str, rejected: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.rejected = list(rejected)


class EndOfStream(Exception):
    """Every producer has closed and every shard is empty: nothing more will arrive."""


def shard_name(queue: str, index: int) -> str:
    return f"{queue}-{index}"


class ShardedQueue:
    """Client of a sharded queue. Picklable: pass it to actors, or `attach` by name."""

    def __init__(self, name: str, shards: list[Any], namespace: str, home: int | None = None):
        self.name = name
        self.namespace = namespace
        self._shards = shards
        self.home = random.randrange(len(shards)) if home is None else home % len(shards)
        self._rr = itertools.count(random.randrange(len(shards)))
        self._put_order: dict[tuple[str, int], int] = {}  # (producer, shard) -> next number

    def __reduce__(self):
        return (ShardedQueue, (self.name, self._shards, self.namespace, self.home))

    def with_home(self, home: int) -> ShardedQueue:
        """A client of the same queue whose consumer prefers shard `home % num_shards`."""
        return ShardedQueue(self.name, self._shards, self.namespace, home)

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        num_shards: int = 1,
        capacity_items: int = 64,
        capacity_bytes: int = 2 << 30,
        namespace: str | None = None,
        persist: bool = False,
        max_blocked_calls: int = 128,
        metrics_labels: Mapping[str, str] | None = None,
    ) -> ShardedQueue:
        """Start `num_shards` shard actors named `<name>-<i>`; capacities are split evenly.

        Each shard allows `max_blocked_calls` puts/gets blocked at once (a consumer blocks at
        most one get per shard, a producer at most its window of puts). Unless `persist`,
        the shards are destroyed when this process exits. With `metrics_labels` (e.g. run and
        queue) each shard exports its depth and bytes as Ray metrics, labelled also by shard.
        """
        import ray

        if num_shards < 1:
            raise ValueError(f"queue {name}: num_shards must be >= 1, got {num_shards}")
        if capacity_items < num_shards:
            raise ValueError(
                f"queue {name}: capacity_items={capacity_items} is less than one record for "
                f"each of its {num_shards} shards"
            )
        if max_blocked_calls < 1:
            raise ValueError(f"queue {name}: max_blocked_calls must be >= 1")
        namespace = namespace or ray.get_runtime_context().namespace
        actor = ray.remote(QueueShard)
        shards = []
        for i in range(num_shards):
            options = dict(
                name=shard_name(name, i),
                namespace=namespace,
                num_cpus=0,
                max_concurrency=max_blocked_calls + RESERVED_THREADS,
                max_restarts=0,
            )
            if persist:
                options["lifetime"] = "detached"
            try:
                shards.append(
                    actor.options(**options).remote(
                        name,
                        i,
                        num_shards,
                        _share(capacity_items, num_shards, i),
                        _share(capacity_bytes, num_shards, i),
                        max_blocked_calls,
                        metrics_labels,
                    )
                )
            except ValueError as exc:
                for shard in shards:
                    ray.kill(shard)
                raise ValueError(
                    f"queue {name!r} already exists in namespace {namespace!r}"
                ) from exc
        ray.get([s.info.remote() for s in shards])
        queue = cls(name, shards, namespace)
        if not persist:
            atexit.register(queue.destroy)
        return queue

    @classmethod
    def attach(
        cls, name: str, namespace: str | None = None, home: int | None = None
    ) -> ShardedQueue:
        """Find an existing queue's shards by name (from any process connected to the cluster)."""
        import ray

        namespace = namespace or ray.get_runtime_context().namespace
        try:
            first = ray.get_actor(shard_name(name, 0), namespace=namespace)
        except ValueError:
            raise ValueError(f"no queue named {name!r} in Ray namespace {namespace!r}") from None
        count = ray.get(first.info.remote())["num_shards"]
        shards = [first] + [
            ray.get_actor(shard_name(name, i), namespace=namespace) for i in range(1, count)
        ]
        return cls(name, shards, namespace, home)

    def destroy(self) -> None:
        """Kill the shard actors (idempotent). Records still queued are gone after this."""
        import ray

        if not ray.is_initialized():
            return
        for shard in self._shards:
            try:
                ray.kill(shard, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone is fine
                pass

    # -- producers and end of stream ---------------------------------------------------------
    def register_producer(self, producer_id: str, owner: Any = None) -> None:
        """Declare a producer: end of stream waits for it to close. `owner` is its actor
        handle when it hands payloads over for the shards to own."""
        import ray

        ray.get([s.register.remote(producer_id, owner) for s in self._shards])

    def close_producer(self, producer_id: str) -> None:
        """This producer will put nothing more."""
        import ray

        ray.get([s.close_producer.remote(producer_id) for s in self._shards])

    def seal(self) -> None:
        """End the stream now, whatever the producers say; queued records can still be read."""
        import ray

        ray.get([s.seal.remote() for s in self._shards])

    # -- put ---------------------------------------------------------------------------------
    def put_async(
        self,
        record: Any,
        producer_id: str | None = None,
        payload_key: int | None = None,
        timeout: float | None = None,
    ):
        """Submit one record to the next shard; the ref resolves to `(accepted, status)`.

        Keeping a few of these in flight (and waiting on the oldest) is how producers overlap
        the round trip with their own work.
        """
        index = next(self._rr) % len(self._shards)
        keys = None if payload_key is None else [payload_key]
        order = None
        if producer_id is not None:  # number this producer's puts per shard: FIFO in flight
            order = self._put_order.get((producer_id, index), 0)
            self._put_order[(producer_id, index)] = order + 1
        return self._shards[index].put.remote(
            PutRequest([record], producer_id, keys, timeout, order)
        )

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.put_many([item], block=block, timeout=timeout)

    def put_many(
        self, items: Sequence[Any], block: bool = True, timeout: float | None = None
    ) -> None:
        """Place items round-robin, one call per shard; raises Full listing what was not placed."""
        import ray

        if not items:
            return
        timeout = timeout if block else 0.0
        start = next(self._rr)
        groups: dict[int, list[int]] = {}  # shard -> positions in `items`
        for i in range(len(items)):
            groups.setdefault((start + i) % len(self._shards), []).append(i)
        refs = [
            self._shards[s].put.remote(PutRequest([items[i] for i in group], timeout=timeout))
            for s, group in groups.items()
        ]
        rejected = sorted(
            i
            for (accepted, _), group in zip(ray.get(refs), groups.values())
            for i in group[accepted:]
        )
        if rejected:
            raise Full(
                f"queue {self.name}: {len(rejected)} of {len(items)} not placed",
                [items[i] for i in rejected],
            )

    # -- get ---------------------------------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.get_many(1, block=block, timeout=timeout)[0]

    def get_async(self, max_items: int = 1, timeout: float | None = LEASE_S):
        """Submit one get to the home shard only; the ref resolves to `(status, records)`
        with status "ok", "empty" (timed out) or "eos". For consumers that keep a window of
        calls in flight; `get_many` is the blocking call that also steals."""
        return self._shards[self.home].get.remote(max_items, timeout)

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list:
        """At least one record, oldest first per shard: up to `max_items` from the home shard,
        or, when it is empty, from whichever shards have data first (up to `max_items` each).

        Raises Empty after `timeout` (immediately when not `block`), EndOfStream when every
        producer has closed and all shards are drained.
        """
        import ray

        home = self._shards[self.home]
        status, items = ray.get(home.get.remote(max_items, 0.0))
        if items:
            return items
        others = [s for s in self._shards if s is not home]
        live = others if status == EOS else [home, *others]
        return self._wait_any(live, max_items, timeout if block else 0.0)

    def _wait_any(self, live: list[Any], max_items: int, timeout: float | None) -> list:
        import ray

        deadline = None if timeout is None else time.monotonic() + timeout
        while live:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            lease = LEASE_S if remaining is None else min(remaining, LEASE_S)
            ticket = uuid.uuid4().hex
            # The first shard's get counts this consumer's wait if every shard times out.
            pending = {s.get.remote(max_items, lease, ticket, s is live[0]): s for s in live}
            items: list = []
            try:
                while pending and not items:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    shard = pending.pop(ready[0])
                    status, got = ray.get(ready[0])
                    items.extend(got)
                    if status == EOS:
                        live.remove(shard)
            except BaseException as exc:
                # One wait failed; the others still run and may take records: release them.
                # Deliver what they took (a lasting failure raises again on the next call).
                # When interrupted, put it back; another consumer may have seen end of stream
                # on that shard meanwhile (interrupts are for interactive use, not stages).
                taken = _withdraw(pending, ticket)
                if isinstance(exc, Exception) and any(got for _, got in taken):
                    return [record for _, got in taken for record in got]
                ray.get(
                    [shard.give_back.remote(got) for shard, got in taken if got],
                    timeout=GIVE_BACK_TIMEOUT_S,
                )
                raise
            if items:
                return items + [r for _, got in _withdraw(pending, ticket) for r in got]
            if deadline is not None and time.monotonic() >= deadline and live:
                raise Empty(f"queue {self.name}: nothing within {timeout} s")
        raise EndOfStream(self.name)

    # -- stats -------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Totals over shards (depth, bytes, puts, gets, blocked time) plus the per-shard list."""
        import ray

        shards = ray.get([s.stats.remote() for s in self._shards])
        total = {
            key: sum(s[key] for s in shards)
            for key in ("depth", "bytes", "puts", "gets", "put_blocked_s", "get_blocked_s")
        }
        total["capacity_items"] = sum(s["capacity_items"] for s in shards)
        total["capacity_bytes"] = sum(s["capacity_bytes"] for s in shards)
        total["end_of_stream"] = all(s["end_of_stream"] for s in shards)
        return {"queue": self.name, "num_shards": len(shards), **total, "shards": shards}


def _share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split into `parts` whole shares that add up to `total`."""
    return total // parts + (1 if index < total % parts else 0)


def _withdraw(pending: dict, ticket: str) -> list[tuple[Any, list]]:
    """Release the other shards' waits; (shard, records) for what each had already taken.
    A shard that failed (died, or refused the wait) took nothing and is left out."""
    import ray

    if not pending:
        return []
    ray.wait(
        [shard.withdraw.remote(ticket) for shard in pending.values()], num_returns=len(pending)
    )
    taken = []
    for ref, shard in pending.items():
        try:
            taken.append((shard, ray.get(ref)[1]))
        except ray.exceptions.RayError:
            continue
    return taken
