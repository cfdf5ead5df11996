"""The accounting behind the exit code: every accepted frame written or accounted for.

The numbers come from the queues (each record counted once, however often it was delivered)
and from summary.json for what the files hold."""

from __future__ import annotations

from typing import Any

from peaknet_pipeline.monitor.report import accounting, exit_code, format_summary

QUEUE = dict(frames_dead=0, redeliveries=0, duplicates_dropped=0)
Q1 = {**QUEUE, "frames_in": 64, "frames_acked": 64}  # 64 frames in, all done by inference
Q2 = {**QUEUE, "frames_in": 56, "frames_acked": 56}  # 56 Results: 8 frames were rejected
OUTPUTS = {"rows_written": 50, "hits": 50, "failed_events": 0}
SOURCES = [{"frames_out": 40}, {"frames_out": 24}]


def test_a_clean_run_is_accounted_and_partial_when_frames_were_rejected():
    acc = accounting(Q1, Q2, SOURCES, OUTPUTS)
    assert acc["accounted"] and acc["frames_rejected_by_inference"] == 8
    assert exit_code(acc, [], hard_stop=False) == 3
    clean = accounting(Q1, {**Q2, "frames_in": 64, "frames_acked": 64}, SOURCES, OUTPUTS)
    assert exit_code(clean, [], hard_stop=False) == 0


def test_frames_never_acknowledged_are_lost_and_fail_the_run():
    acc = accounting(Q1, {**Q2, "frames_acked": 50}, SOURCES, OUTPUTS)
    assert acc["lost_before_writers"] == 6 and not acc["accounted"]
    assert exit_code(acc, [], hard_stop=False) == 1
    acc = accounting({**Q1, "frames_acked": 60}, Q2, SOURCES, OUTPUTS)
    assert acc["lost_before_inference"] == 4 and exit_code(acc, [], hard_stop=False) == 1


def test_redeliveries_and_dropped_copies_change_nothing_but_dead_letters_fail():
    # Records that went to a second consumer after the first died are counted once.
    busy = {**Q1, "redeliveries": 5, "duplicates_dropped": 2}
    acc = accounting(busy, {**Q2, "frames_in": 64, "frames_acked": 64}, SOURCES, OUTPUTS)
    assert acc["accounted"] and acc["redeliveries"] == 5 and acc["copies_dropped"] == 2
    assert exit_code(acc, [], hard_stop=False) == 0
    poisoned = accounting({**Q1, "frames_acked": 56, "frames_dead": 8}, Q2, SOURCES, OUTPUTS)
    assert poisoned["accounted"] and poisoned["frames_dead_lettered"] == 8
    assert exit_code(poisoned, [], hard_stop=False) == 1


def test_data_left_behind_at_ingest_fails_the_run():
    # Received but never ingested (a sealed Q1, or a stream abandoned by an error).
    for extra in ({"frames_not_placed": 8}, {"discarded_at_stop": 1}):
        acc = accounting(Q1, Q2, [{**SOURCES[0], **extra}, SOURCES[1]], OUTPUTS)
        assert not acc["accounted"], extra
        assert exit_code(acc, [], hard_stop=False) == 1


def test_failed_events_in_writers_are_accounted_but_partial():
    acc = accounting(Q1, Q2, SOURCES, {**OUTPUTS, "failed_events": 4})
    assert acc["events_failed_in_writers"] == 4 and acc["accounted"]
    assert exit_code(acc, [], hard_stop=False) == 3


def test_unreplaced_failures_and_hard_stops_decide_first():
    acc = accounting(Q1, {**Q2, "frames_in": 64, "frames_acked": 64}, SOURCES, OUTPUTS)
    assert exit_code(acc, [{"role": "writer", "replacement": None}], hard_stop=False) == 1
    assert exit_code(acc, [], hard_stop=True) == 130


def test_a_run_stopped_before_the_end_of_its_stream_exits_4_unless_worse_happened():
    clean = accounting(Q1, {**Q2, "frames_in": 64, "frames_acked": 64}, SOURCES, OUTPUTS)
    assert exit_code(clean, [], hard_stop=False, stopped_early=True) == 4
    assert exit_code(clean, [], hard_stop=False, stopped_early=False) == 0
    partial = accounting(Q1, Q2, SOURCES, OUTPUTS)  # 8 rejected: 3 says more than 4
    assert exit_code(partial, [], hard_stop=False, stopped_early=True) == 3
    lost = accounting(Q1, {**Q2, "frames_acked": 50}, SOURCES, OUTPUTS)
    assert exit_code(lost, [], hard_stop=False, stopped_early=True) == 1
    assert exit_code(clean, [], hard_stop=True, stopped_early=True) == 130


def _report(**changes: Any) -> dict[str, Any]:
    report = {
        "run_id": "r1",
        "ended_by": "end of stream",
        "stopped_early": False,
        "elapsed_s": 20.0,
        "streaming_s": 10.0,
        "exit_code": 0,
        "output_dir": "/tmp/runs/r1",
        "errors": [],
        "restarts": [],
        "dead_letters": [],
        "config": {"model": {"kind": "threshold"}},
        "accounting": {
            **accounting(Q1, {**Q2, "frames_in": 64, "frames_acked": 64}, SOURCES, OUTPUTS),
            "last_known_counts_of": [],
        },
    }
    return {**report, **changes}


ONE_FILE = {"files": [{"path": "a.cxi"}], "incomplete_files": []}


def test_the_summary_says_in_words_which_frames_are_not_accounted_for():
    acc = accounting({**Q1, "frames_acked": 60}, {**Q2, "frames_acked": 50}, SOURCES, OUTPUTS)
    lines = format_summary(
        _report(accounting={**acc, "last_known_counts_of": []}, exit_code=1), ONE_FILE
    )
    lost = next(line for line in lines.splitlines() if "NOT ACCOUNTED FOR" in line)
    assert "{" not in lost and "lost_" not in lost, lost
    assert "4 frames lost between Q1 and inference" in lost
    assert "6 frames lost between inference and the writers" in lost


def test_the_output_line_counts_files_in_words_and_lists_what_was_written():
    text = format_summary(_report(), ONE_FILE, ("summary.json", "report.json", "report.html"))
    assert text.splitlines()[-1] == (
        "  output: /tmp/runs/r1 (1 CXI file, summary.json, report.json, report.html; exit code 0)"
    )
    two = {**ONE_FILE, "files": [{"path": "a.cxi"}, {"path": "b.cxi"}]}
    assert "(2 CXI files, summary.json; exit code 0)" in format_summary(
        _report(), two, ("summary.json",)
    )


def test_a_stopped_run_says_it_stopped_before_the_end_of_its_stream():
    stopped = _report(ended_by="SIGTERM", stopped_early=True, exit_code=4)
    text = format_summary(stopped, ONE_FILE)
    assert text.startswith("run r1 ended by SIGTERM after 20.0 s (10.0 s streaming)")
    assert (
        "  stopped before the end of its stream: every frame it accepted was written "
        "(exit code 4)" in text.splitlines()
    )
    assert "stopped before" not in format_summary(_report(), ONE_FILE)


def test_a_restart_line_says_who_replaced_the_failed_actor_once():
    failed = {"role": "inference", "error": "ActorDiedError", "records_given_back": 2}
    restarts = [
        {**failed, "id": "inference-0", "replacement": "replaced by the pool"},
        {**failed, "role": "writer", "id": "writer-0", "replacement": "writer-0.1"},
        {**failed, "role": "writer", "id": "writer-1", "replacement": None},
    ]
    lines = format_summary(_report(restarts=restarts), ONE_FILE).splitlines()
    assert "  inference inference-0 failed: ActorDiedError; replaced by the pool; 2 " in "\n".join(
        lines
    )
    assert not any("replaced by replaced" in line for line in lines)
    assert any(
        "writer writer-0 failed: ActorDiedError; replaced by writer-0.1;" in x for x in lines
    )
    assert any("writer writer-1 failed: ActorDiedError; not replaced;" in x for x in lines)
