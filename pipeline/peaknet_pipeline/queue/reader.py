"""Getting from a sharded queue: the home shard first, then every shard at once.

A reader takes from its home shard first and, when it is empty, waits on every shard at once
(one blocking call per shard, no sleeps, no polling loop), so it wakes as soon as any shard has
data and shard 0 is not favoured; it gets at most `max_items` records, and the surplus of a
wait that several shards answered goes back to the front of its shard. End of stream is part of
the queue: when every registered producer has closed and all shards are empty, `get` raises
`EndOfStream`.

`ShardReader` is this walk over the shards, shared by the two ways to get: the queue handle's
plain gets (client.py: records handed over for good) and a consumer's leased gets (leased.py:
records held until acknowledged). They differ in four steps, which each subclass names: the
call a shard answers (`_call`), reading its answer (`_handout`), keeping what was taken
(`_hold`) and putting back the surplus (`_return`).
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import ray

from .eos import EndOfStream
from .status import DRAINED, EOS, Handout

# A blocking shard call returns at least this often, so a consumer that died while waiting
# leaves no call behind for longer than this.
WAIT_SLICE_S = 30.0
# An interrupted consumer waits this long at most to put back records it had taken.
GIVE_BACK_TIMEOUT_S = 10.0


class Empty(Exception):
    """No record arrived within the timeout (the stream is not over)."""


class Drained(Empty):
    """Nothing is queued and every producer has closed, but end of stream waits for leases,
    some of them this consumer's: settle them (acknowledge) and get again."""


class Released(Exception):
    """This consumer was released (the driver saw it die): it must take nothing more."""


class ShardReader:
    """The get side of a sharded queue: `get` and `get_many`, over `shards` from `home`."""

    def __init__(self, name: str, shards: list[Any], home: int | None = None) -> None:
        self.name = name
        self._shards = shards
        self.home = random.randrange(len(shards)) if home is None else home % len(shards)

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    # -- the four steps a subclass names -----------------------------------------------------
    def _call(
        self, index: int, max_items: int, timeout: float | None, ticket: Any, count_wait: bool
    ) -> Any:
        """Submit one get to shard `index`; the ref resolves to its answer."""
        raise NotImplementedError

    def _handout(self, answer: Any) -> Handout:
        """A shard's answer as a Handout (raising what it means for this reader)."""
        return Handout(*answer)

    def _hold(self, index: int, handout: Handout, kept: list) -> None:
        """`kept`, the first records of `handout` (from shard `index`), go to the caller."""

    def _return(self, index: int, handout: Handout) -> Any:
        """Submit putting `handout`'s records back at the front of shard `index`."""
        raise NotImplementedError

    def _drained(self) -> Drained:
        return Drained(f"queue {self.name}: only leases keep it open; settle them")

    # -- get ---------------------------------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.get_many(1, block=block, timeout=timeout)[0]

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list:
        """From 1 to `max_items` records: from the home shard, or, when it is empty, from
        whichever shards have data first (the surplus goes back to the front of its shard).

        Raises Empty after `timeout` (immediately when not `block`), EndOfStream when every
        producer has closed and all shards are drained, Drained when nothing is left to take
        and only leases keep the stream open, some of them this consumer's, Released when
        this consumer was released.
        """
        home = self._handout(ray.get(self._call(self.home, max_items, 0.0, None, True)))
        if home.records:
            return self._keep([(self.home, home)], max_items)
        others = [i for i in range(len(self._shards)) if i != self.home]
        if home.status == DRAINED:  # the other shards may still have records: look once
            try:
                return self._wait_any(others, max_items, 0.0)
            except (Empty, EndOfStream):
                raise self._drained() from None
        live = others if home.status == EOS else [self.home, *others]
        return self._wait_any(live, max_items, timeout if block else 0.0)

    def _wait_any(self, live: list[int], max_items: int, timeout: float | None) -> list:
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
                raise self._drained()
            if deadline is not None and time.monotonic() >= deadline and live:
                raise Empty(f"queue {self.name}: nothing within {timeout} s")
        raise EndOfStream(self.name)

    def _withdraw(self, pending: dict, ticket: str) -> list[tuple[int, Handout]]:
        """Release the other shards' waits; (shard index, handout) for what each had already
        taken. A shard that failed (died, or refused the wait) took nothing and is left out."""
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
        back to the front of its shard."""
        kept: list = []
        surplus: list[tuple[int, Handout]] = []
        for index, handout in answered:
            room = max(0, max_items - len(kept))
            take, rest = handout.records[:room], handout.records[room:]
            if take:
                self._hold(index, handout, take)
            kept.extend(take)
            if rest:  # a plain get's tokens are empty, and stay so
                surplus.append((index, Handout(handout.status, rest, handout.tokens[room:])))
        self._give_back(surplus)
        return kept

    def _give_back(self, taken: list[tuple[int, Handout]]) -> None:
        calls = [self._return(i, h) for i, h in taken if h.records]
        if calls:
            ray.get(calls, timeout=GIVE_BACK_TIMEOUT_S)
