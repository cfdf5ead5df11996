"""The verdict on synthetic timelines: one per word, and the evidence each sentence names.

A timeline is built from per-second rates of the counters the actors report (the same keys as
their `stats()`), so each case states the situation it stands for in its arguments.
"""

from __future__ import annotations

import pytest

from helpers import QUEUE_CAPACITY, timeline
from peaknet_pipeline.monitor import TimeSeries
from peaknet_pipeline.monitor.verdict import run_verdict, streaming_window, verdict

# Inference fed and busy: 40 frames/s, 95% of its time running the model.
FED = {"frames_out": 40, "busy_s": 0.95, "q2_blocked_s": 0.0}
FAST_INGEST = {"frames": 40, "source_s": 0.3, "receive_s": 0.0, "put_s": 0.7}
WRITER = {"events": 40, "busy_s": 0.3}


def test_a_fed_inference_with_low_queues_is_ok():
    judged = verdict(timeline(ingest=FAST_INGEST, inference=FED, writer=WRITER, q1=4))
    assert judged.word == "ok"
    assert "inference busy 95% on cpu" in judged.sentence
    assert judged.evidence["inference_fps"] == 40.0


@pytest.mark.parametrize(
    ("ingest", "bound", "share"),
    [
        ({"frames": 10, "source_s": 1.0, "receive_s": 0.9, "put_s": 0.0}, "receive-bound", "90%"),
        ({"frames": 10, "source_s": 0.85, "receive_s": 0.05, "put_s": 0.1}, "decode-bound", "80%"),
        ({"frames": 10, "source_s": 0.2, "receive_s": 0.0, "put_s": 0.8}, "put-bound", "80%"),
    ],
    ids=["receive", "decode", "put"],
)
def test_inference_waiting_on_an_empty_q1_is_starved_and_names_the_ingest_bound(
    ingest, bound, share
):
    slow = {"frames_out": 10, "busy_s": 0.25}
    judged = verdict(timeline(ingest=ingest, inference=slow, writer=WRITER, q1=0))
    assert judged.word == "starved"
    assert "waited for batches 75% of its time" in judged.sentence
    assert "ingest is the slower side at 10.0 frames/s" in judged.sentence
    assert f"{bound}" in judged.sentence and f"{share} of its time" in judged.sentence


def test_a_silent_source_starves_inference_even_before_any_counter_of_it_moves():
    # Nothing arrives: ingest waits for input the whole time, inference reports no time at
    # all (its compute loop has not returned from waiting once).
    waiting = {"frames": 0, "source_s": 1.0, "receive_s": 1.0, "put_s": 0.0}
    judged = verdict(timeline(ingest=waiting, inference={"frames_out": 0}, writer={}))
    assert judged.word == "starved" and "receive-bound" in judged.sentence
    assert "waited for batches 100%" in judged.sentence


def test_a_full_q1_is_backlogged_and_says_how_much_more_inference_would_keep_up():
    # Inference does 40 frames/s busy all the time; ingest made its 40 frames/s in a quarter
    # of each second (the rest blocked on the full Q1): it could deliver 160 frames/s.
    ingest = {"frames": 40, "source_s": 0.25, "receive_s": 0.0, "put_s": 0.75}
    busy = {"frames_out": 40, "busy_s": 1.0}
    judged = verdict(timeline(ingest=ingest, inference=busy, writer=WRITER, q1=QUEUE_CAPACITY))
    assert judged.word == "backlogged"
    assert "Q1 stayed 100% full" in judged.sentence  # at the end of every interval
    assert "ingest could deliver 160.0 frames/s" in judged.sentence
    assert "about 4.0x the inference capacity" in judged.sentence
    assert "inference.num_actors 1 -> 4" in judged.sentence


def test_q1_full_by_bytes_with_few_records_is_backlogged_too():
    busy = {"frames_out": 40, "busy_s": 1.0}
    judged = verdict(timeline(ingest=FAST_INGEST, inference=busy, writer=WRITER, q1=2, q1_bytes=1))
    assert judged.word == "backlogged"


def test_a_full_q2_is_writer_bound_even_though_q1_fills_behind_it():
    blocked = {"frames_out": 12, "busy_s": 0.3, "q2_blocked_s": 0.65}
    writer = {"events": 12, "busy_s": 0.98}
    judged = verdict(
        timeline(
            ingest=FAST_INGEST,
            inference=blocked,
            writer=writer,
            q1=QUEUE_CAPACITY,
            q2=QUEUE_CAPACITY,
        )
    )
    assert judged.word == "writer-bound"
    assert "busy 98% of their time" in judged.sentence
    assert "blocked on Q2 65% of its time" in judged.sentence
    assert "writer.num_actors" in judged.sentence


def test_any_spill_in_the_window_comes_first():
    judged = verdict(
        timeline(
            ingest=FAST_INGEST,
            inference=FED,
            writer=WRITER,
            q1=QUEUE_CAPACITY,
            spilled_per_s=5_000_000,
        )
    )
    assert judged.word == "spilling"
    assert "spilled 50 MB to disk in 10 s" in judged.sentence
    assert "use peaked at 10 MB of 100 MB" in judged.sentence


def test_a_window_after_ingest_ended_is_draining_not_starved():
    slow = {"frames_out": 10, "busy_s": 0.2}
    samples = timeline(ingest=FAST_INGEST, inference=slow, writer=WRITER, ingest_until=0)
    judged = verdict(samples)
    assert judged.word == "ok" and "draining" in judged.sentence


def test_the_run_is_judged_while_ingest_ran_not_during_the_drain():
    # Backlogged while ingest ran (t = 0..6); the drain after it empties Q1 and idles
    # inference, which must not turn the whole run's verdict into "ok".
    ingest = {"frames": 40, "source_s": 0.25, "receive_s": 0.0, "put_s": 0.75}
    busy = {"frames_out": 40, "busy_s": 1.0}
    samples = timeline(seconds=20, ingest=ingest, inference=busy, q1=QUEUE_CAPACITY, ingest_until=6)
    for sample in samples[8:]:
        sample.queues["Q1"]["depth"] = 0
    series = TimeSeries()
    for sample in samples:
        series.add(sample)
    window = streaming_window(series)
    assert [s.t for s in window] == [float(t) for t in range(8)]  # up to the first without ingest
    assert run_verdict(series).word == "backlogged"


def test_too_little_to_judge_is_none():
    assert verdict([]) is None
    assert verdict(timeline(seconds=0)) is None


def test_the_evidence_is_plain_numbers_for_report_json():
    import json

    judged = verdict(timeline(ingest=FAST_INGEST, inference=FED, writer=WRITER))
    again = json.loads(json.dumps(judged.as_dict()))
    assert again["word"] == "ok" and again["evidence"]["span_s"] == 10.0
