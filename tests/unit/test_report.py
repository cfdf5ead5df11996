"""The accounting behind the exit code: every accepted frame written or accounted for."""

from __future__ import annotations

from peaknet_pipeline.monitor.report import accounting, exit_code

SOURCES = [{"frames": 40}, {"frames": 24}]
INFERENCE = [
    {"frames_in": 40, "frames_out": 32, "rejected_frames": 8},
    {"frames_in": 24, "frames_out": 24, "rejected_frames": 0},
]
WRITERS = [{"events": 56, "rows_written": 50, "hits": 50, "failed": {"bad_output": 0}}]


def test_a_clean_run_is_accounted_and_partial_when_frames_were_rejected():
    acc = accounting(SOURCES, INFERENCE, WRITERS)
    assert acc["accounted"]
    assert acc["frames_rejected_by_inference"] == 8
    assert exit_code(acc, [], hard_stop=False) == 3
    clean = accounting(
        SOURCES,
        [{"frames_in": 40, "frames_out": 40}, {"frames_in": 24, "frames_out": 24}],
        [{"events": 64, "rows_written": 64, "hits": 64, "failed": {}}],
    )
    assert exit_code(clean, [], hard_stop=False) == 0


def test_frames_missing_between_stages_fail_the_run():
    short_writers = [{"events": 50, "rows_written": 50, "hits": 50}]
    acc = accounting(SOURCES, INFERENCE, short_writers)
    assert acc["lost_before_writers"] == 6 and not acc["accounted"]
    assert exit_code(acc, [], hard_stop=False) == 1


def test_data_left_behind_at_ingest_fails_the_run():
    # Received but never ingested (a sealed Q1, or a stream abandoned by an error).
    for extra in ({"frames_not_placed": 8}, {"discarded_at_stop": 1}):
        acc = accounting([{**SOURCES[0], **extra}, SOURCES[1]], INFERENCE, WRITERS)
        assert not acc["accounted"], extra
        assert exit_code(acc, [], hard_stop=False) == 1


def test_failed_events_by_reason_count_as_accounted_but_partial():
    writers = [{"events": 56, "rows_written": 46, "hits": 46, "failed": {"write_error:X": 4}}]
    acc = accounting(SOURCES, INFERENCE, writers)
    assert acc["events_failed_in_writers"] == 4 and acc["accounted"]
    assert exit_code(acc, [], hard_stop=False) == 3


def test_actor_errors_and_hard_stops_decide_first():
    acc = accounting(SOURCES, INFERENCE, WRITERS)
    assert exit_code(acc, [{"role": "writer", "error": "boom"}], hard_stop=False) == 1
    assert exit_code(acc, [], hard_stop=True) == 130
