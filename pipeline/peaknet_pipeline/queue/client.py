"""ShardedQueue: the handle of a queue of N named shard actors, read like Python's `queue.Queue`.

Producers place records round-robin (a record with a `key`, (source id, sequence number), goes
to the shard its key names, and a shard accepts a key once: a batch sent again after a restart,
or a Result made twice, is dropped there). The handle's gets hand records over for good
(reader.py says how a get walks the shards). A consumer that must not lose what it took if it
dies gets through `as_consumer(id)` instead (leased.py), under leases the handle can release
(`release_consumer`) when the driver sees that consumer die. The handle also creates, finds and
destroys the shards, closes producers, seals the stream, and adds up the shards' stats.
"""

from __future__ import annotations

import atexit
import itertools
import random
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..placement import actor_class
from .admission import PutRequest
from .leased import LeasedConsumer
from .reader import ShardReader
from .shard import LEASE_S, MAX_DELIVERIES, RESERVED_THREADS, QueueShard
from .status import Handout

# Shard counters a queue's stats add up.
SUMMED_STATS = (
    "depth",
    "bytes",
    "puts",
    "gets",
    "put_blocked_s",
    "get_blocked_s",
    "leased",
    "acks",
    "redeliveries",
    "expired",
    "late_acks",
    "dead_lettered",
    "duplicates_dropped",
    "frames_in",
    "frames_acked",
    "frames_dead",
)


class Full(Exception):
    """Records could not be placed within the timeout; `rejected` lists them, in order."""

    def __init__(self, message: str, rejected: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.rejected = list(rejected)


def shard_name(queue: str, index: int) -> str:
    return f"{queue}-{index}"


class ShardedQueue(ShardReader):
    """Handle of a sharded queue. Picklable: pass it to actors, or `attach` by name."""

    def __init__(
        self,
        name: str,
        shards: list[Any],
        namespace: str,
        home: int | None = None,
        lease_s: float = LEASE_S,
    ):
        super().__init__(name, shards, home)
        self.namespace = namespace
        self.lease_s = lease_s
        self._rr = itertools.count(random.randrange(len(shards)))
        self._put_order: dict[tuple[str, int], int] = {}  # (producer, shard) -> next number

    def __reduce__(self):
        return (ShardedQueue, (self.name, self._shards, self.namespace, self.home, self.lease_s))

    def with_home(self, home: int) -> ShardedQueue:
        """A handle of the same queue whose gets prefer shard `home % num_shards`."""
        return ShardedQueue(self.name, self._shards, self.namespace, home, self.lease_s)

    def as_consumer(self, consumer: str) -> LeasedConsumer:
        """A client that gets under leases as `consumer` (acknowledge with `ack`), from this
        handle's home shard first."""
        return LeasedConsumer(self.name, self._shards, self.home, consumer, self.lease_s)

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
        lease_s: float = LEASE_S,
        max_deliveries: int = MAX_DELIVERIES,
        node_id: str | None = None,
        metrics_labels: Mapping[str, str] | None = None,
    ) -> ShardedQueue:
        """Start `num_shards` shard actors named `<name>-<i>`; capacities are split evenly.

        Each shard allows `max_blocked_calls` puts/gets blocked at once (a consumer blocks at
        most one get per shard, a producer at most its window of puts). Unless `persist`,
        the shards are destroyed when this process exits. A leased record not extended for
        `lease_s` comes back; one delivered `max_deliveries` times goes to the dead letters.
        With `node_id` the shards run on that node (the driver's: a worker pod that a
        scale-down deletes must not take a shard, and its records, with it). With
        `metrics_labels` (e.g. run and queue) each shard exports its depth and bytes as Ray
        metrics, labelled also by shard.
        """
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
        actor = actor_class(QueueShard)
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
            if node_id is not None:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, False)
            try:
                shards.append(
                    actor.options(**options).remote(
                        name,
                        i,
                        num_shards,
                        _share(capacity_items, num_shards, i),
                        _share(capacity_bytes, num_shards, i),
                        max_blocked_calls,
                        lease_s,
                        max_deliveries,
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
        queue = cls(name, shards, namespace, lease_s=lease_s)
        if not persist:
            atexit.register(queue.destroy)
        return queue

    @classmethod
    def attach(
        cls, name: str, namespace: str | None = None, home: int | None = None
    ) -> ShardedQueue:
        """Find an existing queue's shards by name (from any process connected to the cluster)."""
        namespace = namespace or ray.get_runtime_context().namespace
        try:
            first = ray.get_actor(shard_name(name, 0), namespace=namespace)
        except ValueError:
            raise ValueError(f"no queue named {name!r} in Ray namespace {namespace!r}") from None
        info = ray.get(first.info.remote())
        shards = [first] + [
            ray.get_actor(shard_name(name, i), namespace=namespace)
            for i in range(1, info["num_shards"])
        ]
        return cls(name, shards, namespace, home, lease_s=info["lease_s"])

    def destroy(self) -> None:
        """Kill the shard actors (idempotent). Records still queued are gone after this."""
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
        ray.get([s.register.remote(producer_id, owner) for s in self._shards])

    def close_producer(self, producer_id: str) -> None:
        """This producer will put nothing more."""
        ray.get([s.close_producer.remote(producer_id) for s in self._shards])

    def seal(self) -> None:
        """End the stream now, whatever the producers say; queued records can still be read."""
        ray.get([s.seal.remote() for s in self._shards])

    # -- put ---------------------------------------------------------------------------------
    def _shard_for(self, record: Any) -> int:
        """The shard a record goes to: the one its key names (so every copy of a key meets
        the same shard, which accepts it once), else the next one round-robin."""
        key = getattr(record, "key", None)
        if key is None:
            return next(self._rr) % len(self._shards)
        source, seq = key
        return (zlib.crc32(str(source).encode()) + int(seq)) % len(self._shards)

    def put_async(
        self,
        record: Any,
        producer_id: str | None = None,
        payload_key: int | None = None,
        timeout: float | None = None,
    ):
        """Submit one record to its shard; the ref resolves to `(accepted, status)`.

        Keeping a few of these in flight (and waiting on the oldest) is how producers overlap
        the round trip with their own work.
        """
        index = self._shard_for(record)
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
        """Place items on their shards, one call per shard; raises Full listing what was not
        placed."""
        if not items:
            return
        timeout = timeout if block else 0.0
        groups: dict[int, list[int]] = {}  # shard -> positions in `items`
        for i, item in enumerate(items):
            groups.setdefault(self._shard_for(item), []).append(i)
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

    # -- get (the steps reader.py names) -----------------------------------------------------
    def _call(
        self, index: int, max_items: int, timeout: float | None, ticket: Any, count_wait: bool
    ) -> Any:
        return self._shards[index].get.remote(max_items, timeout, ticket, count_wait)

    def _return(self, index: int, handout: Handout) -> Any:
        return self._shards[index].give_back.remote(handout.records)

    # -- consumers' leases -------------------------------------------------------------------
    def release_consumer(self, consumer: str) -> int:
        """The consumer is dead (the driver saw its actor die): what it held goes back to the
        front of the shards, its waiting gets return. Returns how many records came back."""
        return sum(ray.get([s.release_consumer.remote(consumer) for s in self._shards]))

    def resume_point(self, source: Any) -> tuple[int, int]:
        """(first sequence number of `source` not accepted, highest accepted or -1): where a
        restarted source resumes (from the first gap, if it can send again what it sent; or
        after the highest, if it cannot)."""
        points = ray.get([s.resume_point.remote(source) for s in self._shards])
        return min(p[0] for p in points), max(p[1] for p in points)

    def dead_letters(self) -> list[dict[str, Any]]:
        """Records delivered too many times, never acknowledged (a poison record)."""
        return [
            d
            for letters in ray.get([s.dead_letters.remote() for s in self._shards])
            for d in letters
        ]

    # -- stats -------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Totals over shards (depth, bytes, puts, gets, blocked time) plus the per-shard list."""
        shards = ray.get([s.stats.remote() for s in self._shards])
        total = {key: sum(s[key] for s in shards) for key in SUMMED_STATS}
        total["capacity_items"] = sum(s["capacity_items"] for s in shards)
        total["capacity_bytes"] = sum(s["capacity_bytes"] for s in shards)
        total["end_of_stream"] = all(s["end_of_stream"] for s in shards)
        return {"queue": self.name, "num_shards": len(shards), **total, "shards": shards}


def _share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split into `parts` whole shares that add up to `total`."""
    return total // parts + (1 if index < total % parts else 0)
