"""ShardedQueue: the client of N named shard actors, read like Python's `queue.Queue`.

Producers place records round-robin (a record with a `key`, (source id, sequence number), goes
to the shard its key names, and a shard accepts a key once: a batch sent again after a restart,
or a Result made twice, is dropped there). Consumers take from a home shard first and, when it
is empty, wait on every shard at once (one blocking call per shard, no sleeps, no polling
loop), so a consumer wakes as soon as any shard has data and shard 0 is not favoured; they get
at most `max_items` records, the surplus of a wait that several shards answered goes back.
End of stream is part of the queue: when every registered producer has closed and all shards
are empty, `get` raises `EndOfStream`.

A consumer client (`as_consumer(id)`) holds what it gets under leases (shard.py, leases.py)
and acknowledges each record with `ack` once its output is safely downstream, like
`queue.Queue.task_done`; until then the shard keeps the record, and queues it again if the
consumer is released (`release_consumer`, when the driver sees it die) or stops extending its
leases.
"""

from __future__ import annotations

import atexit
import itertools
import random
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from .acks import AckPump, Holdings, Receipt
from .eos import EndOfStream
from .shard import (
    DRAINED,
    EOS,
    LEASE_S,
    MAX_DELIVERIES,
    RELEASED,
    RESERVED_THREADS,
    Handout,
    PutRequest,
    QueueShard,
    ShardStatus,
)

# A blocking shard call returns at least this often, so a consumer that died while waiting
# leaves no call behind for longer than this.
WAIT_SLICE_S = 30.0
# An interrupted consumer waits this long at most to put back records it had taken.
GIVE_BACK_TIMEOUT_S = 10.0


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


class Empty(Exception):
    """No record arrived within the timeout (the stream is not over)."""


class Full(Exception):
    """Records could not be placed within the timeout; `rejected` lists them, in order."""

    def __init__(self, message: str, rejected: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.rejected = list(rejected)


class Drained(Empty):
    """Nothing is queued and every producer has closed, but end of stream waits for leases,
    some of them this consumer's: settle them (acknowledge) and get again."""


class Released(Exception):
    """This consumer was released (the driver saw it die): it must take nothing more."""


def shard_name(queue: str, index: int) -> str:
    return f"{queue}-{index}"


class ShardedQueue:
    """Client of a sharded queue. Picklable: pass it to actors, or `attach` by name."""

    def __init__(
        self,
        name: str,
        shards: list[Any],
        namespace: str,
        home: int | None = None,
        consumer: str | None = None,
        lease_s: float = LEASE_S,
    ):
        self.name = name
        self.namespace = namespace
        self._shards = shards
        self.home = random.randrange(len(shards)) if home is None else home % len(shards)
        self.consumer = consumer
        self.lease_s = lease_s
        self._rr = itertools.count(random.randrange(len(shards)))
        self._put_order: dict[tuple[str, int], int] = {}  # (producer, shard) -> next number
        self._holdings = Holdings()
        self._pump = (
            None if consumer is None else AckPump(shards, consumer, self._holdings, lease_s)
        )

    def __reduce__(self):
        args = (self.name, self._shards, self.namespace, self.home, self.consumer, self.lease_s)
        return (ShardedQueue, args)

    def with_home(self, home: int) -> ShardedQueue:
        """A client of the same queue whose consumer prefers shard `home % num_shards`."""
        return ShardedQueue(
            self.name, self._shards, self.namespace, home, self.consumer, self.lease_s
        )

    def as_consumer(self, consumer: str) -> ShardedQueue:
        """A client that gets under leases as `consumer` (acknowledge with `ack`)."""
        return ShardedQueue(
            self.name, self._shards, self.namespace, self.home, consumer, self.lease_s
        )

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
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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
        import ray

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
        import ray

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

    # -- get ---------------------------------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.get_many(1, block=block, timeout=timeout)[0]

    def get_async(self, max_items: int = 1, timeout: float | None = WAIT_SLICE_S):
        """Submit one get to the home shard only (a lease get for a consumer client); pass
        what the ref resolves to to `took`. For consumers that keep a window of calls in
        flight; `get_many` is the blocking call that also steals."""
        return self._call(self.home, max_items, timeout)

    def took(self, answer: Any) -> tuple[ShardStatus, list]:
        """(status, records) of a `get_async` answer: ShardStatus OK, EMPTY (timed out), EOS
        or DRAINED; a consumer client now holds the records (acknowledge with `ack`)."""
        handout = self._handout(answer)
        return handout.status, self._keep([(self.home, handout)], len(handout.records))

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list:
        """From 1 to `max_items` records: from the home shard, or, when it is empty, from
        whichever shards have data first (the surplus goes back to the front of its shard).

        Raises Empty after `timeout` (immediately when not `block`), EndOfStream when every
        producer has closed and all shards are drained, Drained when nothing is left to take
        and only leases keep the stream open, some of them this consumer's, Released when
        this consumer was released.
        """
        import ray

        home = self._handout(ray.get(self._call(self.home, max_items, 0.0)))
        if home.records:
            return self._keep([(self.home, home)], max_items)
        others = [i for i in range(len(self._shards)) if i != self.home]
        if home.status == DRAINED:  # the other shards may still have records: look once
            try:
                return self._wait_any(others, max_items, 0.0)
            except (Empty, EndOfStream):
                raise Drained(f"queue {self.name}: settle what {self.consumer} holds") from None
        live = others if home.status == EOS else [self.home, *others]
        return self._wait_any(live, max_items, timeout if block else 0.0)

    def _call(
        self, index: int, max_items: int, timeout: float | None, ticket=None, count_wait=True
    ):
        shard = self._shards[index]
        if self.consumer is None:
            return shard.get.remote(max_items, timeout, ticket, count_wait)
        acks = self._pump.take(index)  # pending acks for this shard ride along
        return shard.lease.remote(self.consumer, max_items, timeout, ticket, count_wait, acks)

    def _handout(self, answer: Any) -> Handout:
        """A plain get's (status, records), or a lease get's Handout, as a Handout."""
        handout = Handout(*answer)
        if handout.status == RELEASED:
            raise Released(f"queue {self.name}: consumer {self.consumer!r} was released")
        return handout

    def _wait_any(self, live: list[int], max_items: int, timeout: float | None) -> list:
        import ray

        deadline = None if timeout is None else time.monotonic() + timeout
        while live:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            wait = WAIT_SLICE_S if remaining is None else min(remaining, WAIT_SLICE_S)
            ticket = uuid.uuid4().hex
            # The first shard's get counts this consumer's wait if every shard times out.
            pending = {self._call(i, max_items, wait, ticket, i == live[0]): i for i in live}
            answered: list[tuple[int, Handout]] = []
            try:
                while pending and not any(h.records or h.status == DRAINED for _, h in answered):
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    index = pending.pop(ready[0])
                    handout = self._handout(ray.get(ready[0]))
                    answered.append((index, handout))
                    if handout.status == EOS:
                        live.remove(index)
            except BaseException as exc:
                # One wait failed; the others still run and may take records: release them.
                # Deliver what they took (a lasting failure raises again on the next call).
                # When interrupted, put it back; another consumer may have seen end of stream
                # on that shard meanwhile (interrupts are for interactive use, not stages).
                taken = [(i, h) for i, h in self._withdraw(pending, ticket) + answered if h.records]
                if isinstance(exc, Exception) and not isinstance(exc, Released) and taken:
                    return self._keep(taken, max_items)
                self._give_back(taken)
                raise
            if any(h.records for _, h in answered):
                return self._keep(answered + self._withdraw(pending, ticket), max_items)
            if any(h.status == DRAINED for _, h in answered):
                taken = self._withdraw(pending, ticket)
                if taken:
                    return self._keep(taken, max_items)
                raise Drained(f"queue {self.name}: settle what {self.consumer} holds")
            if deadline is not None and time.monotonic() >= deadline and live:
                raise Empty(f"queue {self.name}: nothing within {timeout} s")
        raise EndOfStream(self.name)

    def _withdraw(self, pending: dict, ticket: str) -> list[tuple[int, Handout]]:
        """Release the other shards' waits; (shard index, handout) for what each had already
        taken. A shard that failed (died, or refused the wait) took nothing and is left out."""
        import ray

        if not pending:
            return []
        withdrawals = [self._shards[i].withdraw.remote(ticket) for i in pending.values()]
        ray.wait(withdrawals, num_returns=len(withdrawals))
        taken = []
        for ref, index in pending.items():
            try:
                answer = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            handout = Handout(*answer)
            if handout.records:
                taken.append((index, handout))
        return taken

    def _keep(self, answered: list[tuple[int, Handout]], max_items: int) -> list:
        """The first `max_items` records, in the order the shards answered; the rest goes
        back to the front of its shard. Kept leased records are remembered for `ack`."""
        kept: list = []
        surplus: list[tuple[int, Handout]] = []
        for index, handout in answered:
            room = max(0, max_items - len(kept))
            take, rest = handout.records[:room], handout.records[room:]
            for k, record in enumerate(take):
                if self.consumer is not None:
                    previous = tuple(handout.previous.get(k, ()))
                    receipt = Receipt(index, handout.tokens[k], previous)
                    self._holdings.add(record, receipt)
                kept.append(record)
            if rest:
                tokens = handout.tokens[room:] if self.consumer is not None else []
                surplus.append((index, Handout(handout.status, rest, tokens)))
        self._give_back(surplus)
        if self.consumer is not None and kept:
            self._pump.start()
        return kept

    def _give_back(self, taken: list[tuple[int, Handout]]) -> None:
        import ray

        calls = [
            self._shards[i].give_back.remote(None, h.tokens)
            if self.consumer is not None
            else self._shards[i].give_back.remote(h.records)
            for i, h in taken
            if h.records
        ]
        if calls:
            ray.get(calls, timeout=GIVE_BACK_TIMEOUT_S)

    # -- leases ------------------------------------------------------------------------------
    def ack(self, records: Sequence[Any]) -> None:
        """These records (got through this consumer client) are safely downstream. Sent in
        the background; unknown records are ignored."""
        receipts = [r for r in (self._holdings.pop(record) for record in records) if r]
        if receipts:
            self._pump.ack(receipts)

    def flush_acks(self, timeout_s: float = 30.0) -> None:
        """Wait until every acknowledgement made so far has reached its shard."""
        if self._pump is not None:
            self._pump.flush(timeout_s)

    def previous_consumers(self, record: Any) -> tuple[str, ...]:
        """Who had this held record before (empty unless it is a redelivery)."""
        receipt = self._holdings.receipt(record)
        return receipt.previous if receipt else ()

    def held(self) -> int:
        """Records this consumer holds, not yet acknowledged."""
        return len(self._holdings)

    def settle(self, timeout_s: float) -> None:
        """After Drained: wait until this consumer holds nothing (its other threads are
        finishing what it holds), then until its acknowledgements have arrived."""
        self._holdings.wait_empty(timeout_s)
        self.flush_acks()

    def release_consumer(self, consumer: str) -> int:
        """The consumer is dead (the driver saw its actor die): what it held goes back to the
        front of the shards, its waiting gets return. Returns how many records came back."""
        import ray

        return sum(ray.get([s.release_consumer.remote(consumer) for s in self._shards]))

    def resume_point(self, source: Any) -> tuple[int, int]:
        """(first sequence number of `source` not accepted, highest accepted or -1): where a
        restarted source resumes (from the first gap, if it can send again what it sent; or
        after the highest, if it cannot)."""
        import ray

        points = ray.get([s.resume_point.remote(source) for s in self._shards])
        return min(p[0] for p in points), max(p[1] for p in points)

    def dead_letters(self) -> list[dict[str, Any]]:
        """Records delivered too many times, never acknowledged (a poison record)."""
        import ray

        return [
            d
            for letters in ray.get([s.dead_letters.remote() for s in self._shards])
            for d in letters
        ]

    # -- stats -------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Totals over shards (depth, bytes, puts, gets, blocked time) plus the per-shard list."""
        import ray

        shards = ray.get([s.stats.remote() for s in self._shards])
        total = {key: sum(s[key] for s in shards) for key in SUMMED_STATS}
        total["capacity_items"] = sum(s["capacity_items"] for s in shards)
        total["capacity_bytes"] = sum(s["capacity_bytes"] for s in shards)
        total["end_of_stream"] = all(s["end_of_stream"] for s in shards)
        return {"queue": self.name, "num_shards": len(shards), **total, "shards": shards}


def _share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split into `parts` whole shares that add up to `total`."""
    return total // parts + (1 if index < total % parts else 0)
