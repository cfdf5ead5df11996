"""QueueConsumer, the one prefetch loop of inference and writers, without Ray: a scripted queue
client stands in for ShardedQueue, a dict of payloads for the object store."""

from __future__ import annotations

import queue
from dataclasses import dataclass

import pytest

from peaknet_pipeline.queue import Drained, Empty, EndOfStream, QueueConsumer, Released
from peaknet_pipeline.queue.consumer import materialise


@dataclass(frozen=True)
class Rec:
    ref: str | None
    size: int = 2
    nbytes: int = 10


class ScriptedQueue:
    """Answers get_many from a script: a list of records, or an exception to raise; end of
    stream once the script is spent. Records what was asked for."""

    name = "q-test"
    num_shards = 1

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.asked: list[int] = []
        self.settled = 0

    def get_many(self, max_items: int, timeout: float | None = None) -> list:
        self.asked.append(max_items)
        if not self.answers:
            raise EndOfStream(self.name)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def settle(self, timeout_s: float) -> None:
        self.settled += 1


STORE = {"a": "A", "b": "B", "c": "C"}


def store_get(refs: list, timeout_s: float | None) -> list:
    """ray.get over STORE: any unknown ref fails the whole call, as a lost object does."""
    return [STORE[r] for r in refs]


def refs_of(rec: Rec):
    return None if rec.ref is None else (rec.ref,)


def drain(consumer: QueueConsumer) -> list:
    items = []
    while not isinstance(item := consumer.get(), EndOfStream):
        items.append(item)
        consumer.done()
    return [*items, item]


def test_items_in_order_then_the_end_token_and_counts():
    q = ScriptedQueue([Rec("a"), Rec("b")], Empty(), [Rec("c")])
    consumer = QueueConsumer(q, refs_of, bound=4, get=store_get)
    consumer.start()
    *items, end = drain(consumer)
    consumer.join()
    assert [(r.ref, got) for r, got in items] == [("a", ("A",)), ("b", ("B",)), ("c", ("C",))]
    assert end.error is None and consumer.end is end
    counts = consumer.counts()
    assert (counts["batches"], counts["frames"], counts["bytes"]) == (3, 6, 30)
    assert counts["pending"] == 0


def test_one_unreadable_payload_costs_only_its_own_record():
    got = materialise([Rec("a"), Rec("lost"), Rec(None), Rec("c")], refs_of, store_get)
    assert got[0] == ("A",) and got[3] == ("C",)
    assert isinstance(got[1], KeyError)  # the error it failed with, for the actor to count
    assert got[2] is None  # nothing to read


def test_an_int_bound_asks_only_for_the_room_left():
    q = ScriptedQueue([Rec("a"), Rec("b")], [Rec("c")])
    consumer = QueueConsumer(q, refs_of, bound=2, get=store_get)
    consumer.start()
    consumer.get(), consumer.get()
    consumer.done()  # one of two done: room for one
    assert consumer.get()[0].ref == "c"
    consumer.done()
    consumer.done()
    assert isinstance(consumer.get(), EndOfStream)
    assert q.asked[:2] == [2, 1]


def test_a_callable_bound_is_asked_each_time():
    q = ScriptedQueue([Rec("a")])
    wanted = iter([3, 0])  # 0 still asks for one: a consumer never asks for nothing
    consumer = QueueConsumer(q, refs_of, bound=lambda: next(wanted), get=store_get)
    consumer.start()
    drain(consumer)
    assert q.asked == [3, 1]


def test_drained_settles_what_it_holds_then_gets_again():
    q = ScriptedQueue(Drained("q"), [Rec("a")])
    consumer = QueueConsumer(q, refs_of, bound=2, poll_s=0.5, get=store_get)
    consumer.start()
    *items, _ = drain(consumer)
    assert q.settled == 1 and len(items) == 1


def test_an_actor_can_settle_in_order_behind_fetched_items():
    marker = object()
    q = ScriptedQueue([Rec("a")], Drained("q"))
    consumer = QueueConsumer(q, refs_of, bound=4, get=store_get, on_drained=lambda: put(marker))
    put = consumer.put
    consumer.start()
    items = [consumer.get() for _ in range(3)]
    assert items[1] is marker and isinstance(items[2], EndOfStream)


def test_a_failed_get_ends_the_stream_with_its_error():
    q = ScriptedQueue([Rec("a")], Released("consumer x was released"))
    consumer = QueueConsumer(q, refs_of, bound=4, get=store_get)
    consumer.start()
    *items, end = drain(consumer)
    assert len(items) == 1
    assert isinstance(end.error, Released)


def test_prepare_may_drop_a_record_which_then_frees_its_room():
    q = ScriptedQueue([Rec("a"), Rec("b")], [Rec("c")])
    prepare = lambda rec, got, taken: None if rec.ref == "a" else rec.ref  # noqa: E731
    consumer = QueueConsumer(q, refs_of, bound=2, prepare=prepare, get=store_get)
    consumer.start()
    assert drain(consumer)[:2] == ["b", "c"]
    assert q.asked[:2] == [2, 1]


def test_stop_wakes_a_consumer_waiting_for_room_and_ends_it():
    q = ScriptedQueue([Rec("a")], [Rec("b")])
    consumer = QueueConsumer(q, refs_of, bound=1, get=store_get)
    consumer.start()
    consumer.get()  # never done: the thread waits for room
    consumer.stop()
    end = consumer.get()
    consumer.join()
    assert isinstance(end, EndOfStream) and end.error is None
    assert q.asked == [1]


def test_get_without_blocking_reads_like_queue_queue():
    consumer = QueueConsumer(ScriptedQueue(), refs_of, bound=1, get=store_get)
    with pytest.raises(queue.Empty):
        consumer.get(block=False)


def test_the_end_token_carries_why_and_pickles_with_it():
    import pickle

    error = RuntimeError("boom")
    end = pickle.loads(pickle.dumps(EndOfStream("error", error)))
    assert (end.reason, str(end), type(end.error), str(end.error)) == (
        "error",
        "error",
        RuntimeError,
        "boom",
    )
