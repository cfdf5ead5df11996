"""What the pusher says while it runs (sources/push_report.py), driven with a fake clock."""

from __future__ import annotations

import io

import pytest

from peaknet_pipeline.sources.push_report import (
    CLEAR_LINE,
    Reporter,
    describe,
    rates,
    stream_progress,
    summarize,
    waiting_line,
)


class FakeSender:
    """Stands in for ZmqPush/NngPush with what the reporter reads: the endpoint, the peers
    connected now and whether one ever was. It sends nothing; the transports' own peer
    tracking is tested against real sockets in tests/integration/test_push_peers.py."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.peers = 0
        self.ever_connected = False

    def connect(self) -> None:
        self.peers, self.ever_connected = 1, True


def _reporter(n: int = 1, live: bool = False, every_s: float = 5.0, total: int = 0):
    senders = [FakeSender(f"tcp://127.0.0.1:{9000 + i}") for i in range(n)]
    counts = [{"frames": 0, "bytes": 0, "closed": False} for _ in range(n)]
    out = io.StringIO()
    return Reporter(senders, counts, total, out, live, every_s), senders, counts, out


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_waiting_is_said_after_a_second_then_every_ten_and_ends_when_a_receiver_connects():
    reporter, (sender,), _, out = _reporter()
    for now in (0.0, 0.5, 0.9):
        reporter.tick(now)
    assert out.getvalue() == ""
    reporter.tick(1.0)
    assert _lines(out) == [
        "push: stream 0: waiting for a receiver at tcp://127.0.0.1:9000 "
        "(nothing has connected for 1 s)"
    ]
    for now in (2.0, 5.0, 10.9):
        reporter.tick(now)
    assert len(_lines(out)) == 1
    reporter.tick(11.0)
    assert _lines(out)[-1].endswith("(nothing has connected for 11 s)")
    sender.connect()
    reporter.tick(12.0)
    assert _lines(out)[-1] == "push: stream 0: receiver connected at tcp://127.0.0.1:9000"
    sender.peers = 0  # it went away
    reporter.tick(13.0)
    reporter.tick(14.5)
    assert _lines(out)[-1].endswith("(the receiver disconnected 2 s ago)")
    assert len(_lines(out)) == 4


def test_each_address_without_a_peer_is_named_and_finished_streams_are_not():
    reporter, senders, counts, out = _reporter(n=3)
    senders[1].connect()
    counts[2]["closed"] = True  # done: its peer count no longer matters
    reporter.tick(0.0)
    reporter.tick(1.0)
    assert _lines(out) == [
        "push: stream 0: waiting for a receiver at tcp://127.0.0.1:9000 "
        "(nothing has connected for 1 s)"
    ]


def test_plain_progress_lines_give_frames_and_rate_per_stream():
    reporter, senders, counts, out = _reporter(n=2, every_s=2.0, total=64)
    for s in senders:
        s.connect()
    for now in range(5):  # stream 0 sends 8 frames/s (0.8 MB/s), stream 1 4 frames/s
        counts[0]["frames"], counts[0]["bytes"] = 8 * now, 800_000 * now
        counts[1]["frames"], counts[1]["bytes"] = 4 * now, 400_000 * now
        reporter.tick(float(now))
    assert _lines(out) == [
        "push: sent stream 0: 16/64 frames, 8.0 frames/s, 0.8 MB/s; "
        "stream 1: 8/64 frames, 4.0 frames/s, 0.4 MB/s",
        "push: sent stream 0: 32/64 frames, 8.0 frames/s, 0.8 MB/s; "
        "stream 1: 16/64 frames, 4.0 frames/s, 0.4 MB/s",
    ]


def test_no_progress_line_repeats_a_standstill_the_waiting_line_explains():
    reporter, _, counts, out = _reporter(every_s=1.0)
    counts[0]["frames"] = 40  # queued before anyone listened
    for now in range(4):
        reporter.tick(float(now))
    lines = _lines(out)
    assert sum("waiting for a receiver" in line for line in lines) == 1
    assert sum(line.startswith("push: sent") for line in lines) == 1


def test_a_terminal_gets_one_live_line_that_other_lines_clear_first():
    reporter, (sender,), counts, out = _reporter(live=True)
    sender.connect()
    reporter.tick(0.0)
    counts[0]["frames"] = 8
    reporter.tick(0.5)
    counts[0]["frames"] = 16
    reporter.tick(1.0)
    reporter.say("push: stream 0: 2 messages sent; waiting up to 30.0 s for delivery")
    reporter.finish()
    text = out.getvalue()
    assert text == (
        "push: sent stream 0: 8 frames, 16.0 frames/s, 0.0 MB/s"
        + CLEAR_LINE
        + "push: sent stream 0: 16 frames, 16.0 frames/s, 0.0 MB/s"
        + CLEAR_LINE
        + "push: stream 0: 2 messages sent; waiting up to 30.0 s for delivery\n"
    )


def test_progress_can_be_switched_off():
    reporter, (sender,), counts, out = _reporter(every_s=0)
    sender.connect()
    for now in range(20):
        counts[0]["frames"] = now
        reporter.tick(float(now))
    assert out.getvalue() == ""


def test_line_texts():
    assert rates((0.0, [0, 10], [0, 5]), (2.0, [8, 10], [4e6, 5])) == [(4.0, 2e6), (0.0, 0.0)]
    assert rates((1.0, [0], [0]), (1.0, [5], [5])) == [(0.0, 0.0)]
    assert stream_progress(1, 5, 0, 2.5, 3e6) == "stream 1: 5 frames, 2.5 frames/s, 3.0 MB/s"
    assert waiting_line(0, "tcp://h:1", 3.4, False) == (
        "push: stream 0: waiting for a receiver at tcp://h:1 (nothing has connected for 3 s)"
    )
    with pytest.raises(ValueError):
        rates((0.0, [0], [0]), (1.0, [1, 2], [0, 0]))  # streams must line up


def test_the_summary_names_addresses_that_never_had_a_receiver():
    streams = [
        {"messages": 2, "frames": 8, "bytes": 100, "delivered": True, "ever_connected": True},
        {"messages": 2, "frames": 8, "bytes": 100, "delivered": False, "ever_connected": False},
        {"messages": 2, "frames": 8, "bytes": 100, "delivered": False, "ever_connected": True},
    ]
    summary = summarize(streams, ["tcp://a:1", "tcp://b:2", "tcp://c:3"])
    assert summary["frames"] == 24 and summary["delivered"] is False
    assert summary["no_receiver"] == ["tcp://b:2"]  # c had one: its loss is the linger's
    assert describe(summary).endswith("NOT DELIVERED: no receiver ever connected to tcp://b:2")
    summary = summarize(streams[2:], ["tcp://c:3"])
    assert describe(summary).endswith(
        "SOME MAY BE LOST (a receiver connected, but the linger expired)"
    )
