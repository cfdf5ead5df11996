"""monitor/objectstore.py UsageReader: a read of the object store's use that takes long (the
raylet waits for a worker that does not answer) does not hold up the driver's loop; the loop
gets the newest reading meanwhile, and no second read starts while one is under way."""

from __future__ import annotations

import threading

from peaknet_pipeline.monitor.objectstore import ObjectStoreUsage, UsageReader


class Store:
    """Stands in for the raylet: each read answers the next reading, once `go` is set."""

    def __init__(self) -> None:
        self.reads = 0
        self.go = threading.Event()
        self.go.set()

    def read(self) -> ObjectStoreUsage | None:
        self.reads += 1
        assert self.go.wait(timeout=30), "the test never let the read finish"
        return ObjectStoreUsage(used_bytes=self.reads, spilled_bytes=0, capacity_bytes=100)


def test_a_slow_read_is_left_to_finish_and_the_newest_reading_answers_meanwhile():
    store = Store()
    reader = UsageReader(wait_s=0.01, first_wait_s=30, read=store.read)
    assert reader.read().used_bytes == 1  # in time: this read's own answer

    store.go.clear()  # the raylet now waits for a stopped worker
    assert reader.read().used_bytes == 1  # read 2 is late: the newest reading so far
    late = reader._thread
    assert reader.read().used_bytes == 1  # and is not waited for again,
    assert reader._thread is late and late.is_alive()  # nor is a read started beside it

    store.go.set()
    late.join(timeout=30)
    assert store.reads == 2
    assert reader.read().used_bytes == 2  # the late answer, once it came
    assert reader.read().used_bytes == 3  # and reads go on
    assert store.reads == 3


def test_the_first_read_is_waited_for_and_a_failed_read_says_none():
    answers = iter([None, ObjectStoreUsage(1, 0, 9)])
    reader = UsageReader(wait_s=0.01, first_wait_s=30, read=lambda: next(answers))
    assert reader.read() is None  # Ray could not say: no reading, not an old one
    assert reader.read() == ObjectStoreUsage(1, 0, 9)
