"""report.json: how the run went (what each stage did, whether every accepted frame is
accounted for, what failed). What the files hold is in summary.json (writer/summary.py); each
fact is in one of the two, not both.

`accounting` is the rule behind the exit code: frames ingested = frames inferred + frames
rejected (by reason) by inference, and frames inferred = events the writers handled; nothing
received may have been left behind at ingest. Any difference is frames lost, and the run fails.

Exit codes: 0 the stream ended and every frame was written; 4 the run was stopped before the
end of its stream (a drained Ctrl-C or SIGTERM, `peaknet-pipeline stop`,
runtime.max_run_time_s) and every frame it accepted was written; 3 every frame accounted for,
but some were rejected by inference or failed in a writer (see the reasons); 1 frames lost or
an actor failed; 130 stopped at once (second Ctrl-C, or the drain timed out). The CLI uses 2
for a config or start-up error. A script tells a stopped run from a complete one by the exit
code, or by report.json's `stopped_early` (also set when 3 or 1 takes precedence).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import PipelineConfig, config_hash
from ..placement import Role
from ..restarts import POOL_REPLACES
from ..stats import total
from .gpu_usage import gpu_section
from .latency import latency_report

EXIT_OK, EXIT_LOST, EXIT_PARTIAL, EXIT_STOPPED, EXIT_HARD_STOP = 0, 1, 3, 4, 130


def accounting(
    q1: Mapping[str, Any], q2: Mapping[str, Any], sources: list[dict], outputs: Mapping[str, Any]
) -> dict[str, Any]:
    """Frame counts along the pipeline, and what is missing between stages.

    The numbers come from the queues, which count each record once however often it was
    delivered (actors that died and were replaced make no difference): frames accepted into
    Q1, Results accepted into Q2, and the frames whose records were acknowledged (by
    inference: a Result in Q2, or rejected; by writers: committed in a closed file) or given
    up as dead letters. What the files hold comes from summary.json (`outputs`).
    """
    ingested, inferred = q1["frames_in"], q2["frames_in"]
    done_q1, done_q2 = q1["frames_acked"], q2["frames_acked"]
    counts = {
        "frames_ingested": ingested,
        "frames_inferred": inferred,
        "frames_rejected_by_inference": max(0, done_q1 - inferred),
        "events_handled_by_writers": done_q2,
        "events_written": outputs["rows_written"],
        "hits": outputs["hits"],
        "events_failed_in_writers": outputs["failed_events"],
        "frames_dead_lettered": q1["frames_dead"] + q2["frames_dead"],
        "redeliveries": q1["redeliveries"] + q2["redeliveries"],
        "copies_dropped": q1["duplicates_dropped"] + q2["duplicates_dropped"],
        "lost_at_ingest_frames": int(total(sources, "frames_not_placed")),
        "lost_at_ingest_messages": int(total(sources, "discarded_at_stop")),
        "lost_before_inference": ingested - done_q1 - q1["frames_dead"],
        "lost_before_writers": inferred - done_q2 - q2["frames_dead"],
    }
    counts["accounted"] = all(v == 0 for k, v in counts.items() if k.startswith("lost_"))
    return counts


def exit_code(
    counts: dict[str, Any], unrecovered: list, hard_stop: bool, stopped_early: bool = False
) -> int:
    """130 hard stop; 1 frames lost or given up, or an actor failed and was not replaced;
    3 frames rejected or failed in writers; 4 stopped before the end of its stream, every
    accepted frame written; else 0 (actors that failed and were replaced, their work redone,
    do not fail the run: the report lists them). A stop is the least of these: a script must
    not read "stopped, all written" over lost or rejected frames."""
    if hard_stop:
        return EXIT_HARD_STOP
    if not counts["accounted"] or counts["frames_dead_lettered"] or unrecovered:
        return EXIT_LOST
    if counts["frames_rejected_by_inference"] or counts["events_failed_in_writers"]:
        return EXIT_PARTIAL
    return EXIT_STOPPED if stopped_early else EXIT_OK


def build_report(
    cfg: PipelineConfig,
    pipeline: Any,
    started: float,
    ended_by: str,
    outputs: Mapping[str, Any],
    hard_stop: bool,
    verdict: Any = None,
    stopped_early: bool = False,
    samples: Sequence[Any] = (),
    live_feed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of a finished (or stopped) run; `exit_code` is 0 only for a clean run that
    reached the end of its stream. `verdict` is the run's (monitor/verdict.py), None when it
    was too short to judge; `stopped_early`: ingest was stopped before its stream ended;
    `samples`: the time series the verdict judged, against which `gpu` sets each GPU's
    utilisation beside Q1's depth (monitor/gpu_usage.py; null on the CPU); `live_feed`: the
    live CrystFEL feed's final counts (writer/feed.py), null when it did not run."""

    def summaries(role: Role) -> list[dict]:
        return [a.counts for a in pipeline.of(role)]

    errors = [
        {"role": a.role, "id": a.actor_id, "error": a.error}
        for a in pipeline.actors
        if a.error is not None
    ]
    restarts = pipeline.supervisor.restarts
    unrecovered = [r for r in restarts if not r.recovered]
    q1, q2 = pipeline.q1.stats(), pipeline.q2.stats()
    letters = pipeline.q1.dead_letters() + pipeline.q2.dead_letters()  # each shard's newest
    counts = accounting(q1, q2, summaries(Role.INGEST), outputs)
    # An actor that did not finish (failed, or killed by a hard stop) has only its last
    # progress counts in its own section below; the accounting above does not use them.
    counts["last_known_counts_of"] = [a.actor_id for a in pipeline.actors if a.summary is None]
    return {
        "run_id": pipeline.run_id,
        "software_version": __version__,
        "config_hash": config_hash(cfg),
        "output_dir": str(pipeline.output_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 3),
        "streaming_s": round(time.time() - (pipeline.streaming_since or time.time()), 3),
        "ended_by": ended_by,
        "stopped_early": stopped_early or hard_stop,
        "exit_code": exit_code(counts, unrecovered, hard_stop, stopped_early),
        "verdict": verdict.as_dict() if verdict is not None else None,
        "accounting": counts,
        "errors": errors,
        "restarts": [r.as_dict() for r in restarts],
        "restarts_dropped": getattr(restarts, "dropped", 0),  # the oldest, past RESTARTS_KEPT
        "dead_letters": letters,
        "dead_letters_dropped": max(0, q1["dead_lettered"] + q2["dead_lettered"] - len(letters)),
        "ingest": summaries(Role.INGEST),
        "inference": summaries(Role.INFERENCE),
        "gpu": gpu_section(samples, {a.actor_id: a.counts for a in pipeline.of(Role.INFERENCE)}),
        "writer": [_without(s, WRITER_FILE_KEYS) for s in summaries(Role.WRITER)],
        "latency": latency_report(summaries(Role.WRITER)),  # arrival -> written, per event
        "outputs": "summary.json",
        "config": cfg.model_dump(mode="json"),
        "live_feed": dict(live_feed) if live_feed is not None else None,
    }


WRITER_FILE_KEYS = ("files", "output_dir")  # listed once, in summary.json


def _without(d: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def _recovery_line(recovery: dict[str, Any], model: dict[str, Any]) -> str:
    from ..evaluate import recovery_lines

    return "\n".join(f"  {line}" for line in recovery_lines(recovery, model))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# What each `lost_*` count of the accounting means, for the summary's NOT ACCOUNTED FOR line.
LOST_WORDS = {
    "lost_at_ingest_frames": ("frame", "received at ingest but never placed in Q1"),
    "lost_at_ingest_messages": ("message", "received at ingest but discarded when it stopped"),
    "lost_before_inference": ("frame", "lost between Q1 and inference"),
    "lost_before_writers": ("frame", "lost between inference and the writers"),
}


def lost_in_words(acc: Mapping[str, Any]) -> str:
    """`80 frames lost between Q1 and inference, 3 frames ...`: every non-zero `lost_*` count
    of the accounting, in words."""
    parts = []
    for key, value in acc.items():
        if key.startswith("lost_") and value:
            noun, where = LOST_WORDS.get(
                key, ("frame", key.removeprefix("lost_").replace("_", " "))
            )
            parts.append(f"{_plural(value, noun)} {where}")
    return ", ".join(parts)


def _files_line(report: dict[str, Any], summary: dict[str, Any], written: Sequence[str]) -> str:
    files = _plural(len(summary["files"]), "CXI file")
    if "daq_runs" in summary:  # a service: its files are in its DAQ runs' folders (service.py)
        files = f"{_plural(len(summary['daq_runs']), 'DAQ run')} in their folders, index.json"
    incomplete = summary["incomplete_files"]
    if incomplete:
        known = [f["events_known"] for f in incomplete if f.get("events_known") is not None]
        events = f", {_plural(sum(known), 'event')} known in them" if known else ""
        files += f" and {len(incomplete)} incomplete (.part{events})"
    return (
        f"  output: {report['output_dir']} ({', '.join([files, *written])}; "
        f"exit code {report['exit_code']})"
    )


def format_summary(
    report: dict[str, Any],
    summary: dict[str, Any],
    written: Sequence[str] = ("summary.json", "report.json"),
) -> str:
    """A few lines for the console at the end of a run, from report.json and summary.json;
    `written` names the run's other files as written (report.html only when it was)."""
    acc = report["accounting"]
    streaming = max(report["streaming_s"], 1e-9)
    lines = [
        f"run {report['run_id']} ended by {report['ended_by']} after {report['elapsed_s']:.1f} s "
        f"({streaming:.1f} s streaming)",
        f"  frames ingested {acc['frames_ingested']}, inferred {acc['frames_inferred']} "
        f"({acc['frames_inferred'] / streaming:.1f}/s), rejected {acc['frames_rejected_by_inference']}",
        f"  events written {acc['events_written']} ({acc['hits']} hits), "
        f"failed in writers {acc['events_failed_in_writers']}",
    ]
    if acc["frames_rejected_by_inference"] or acc["events_failed_in_writers"]:
        lines.append("  some frames were rejected or failed: see the reasons in report.json")
    if not acc["accounted"]:
        lines.append(f"  NOT ACCOUNTED FOR: {lost_in_words(acc)}")
    if acc["last_known_counts_of"]:
        lines.append(
            f"  counts of {', '.join(acc['last_known_counts_of'])} are their last progress "
            "counts (they did not finish): the differences above are approximate"
        )
    for r in report["restarts"]:
        replacement = r.get("replacement")
        what = f"replaced by {replacement}" if replacement else "not replaced"
        if replacement == POOL_REPLACES:
            what = POOL_REPLACES
        if r.get("retiring"):
            what = "it was retiring"
        lines.append(
            f"  {r['role']} {r['id']} failed: {r['error']}; {what}; "
            f"{r['records_given_back']} records it held went to the others"
        )
    if report.get("restarts_dropped"):
        lines.append(f"  and {report['restarts_dropped']} earlier failures, recovered")
    if report["dead_letters"]:
        given_up = len(report["dead_letters"]) + report.get("dead_letters_dropped", 0)
        lines.append(
            f"  {given_up} records given up after too many deliveries "
            f"(dead letters, the newest {len(report['dead_letters'])} named in report.json)"
        )
    if report.get("verdict"):
        lines.append(f"  verdict: {report['verdict']['word']}: {report['verdict']['sentence']}")
    if "recovery" in summary:
        lines.append(_recovery_line(summary["recovery"], report["config"]["model"]))
    if report["exit_code"] == EXIT_STOPPED:
        lines.append(
            "  stopped before the end of its stream: every frame it accepted was written "
            f"(exit code {EXIT_STOPPED})"
        )
    lines.append(_files_line(report, summary, written))
    return "\n".join(lines)
