"""report.html: one self-contained page per run (every figure an embedded PNG, no network),
answering first whether inference was fed and what held it back, then showing the data.

Drawn at the end of a run from what the driver holds, and again at any time by
`peaknet-pipeline report RUN_DIR` from the run directory alone (timeseries.jsonl, report.json,
summary.json and the CXI files). One column no wider than a laptop screen, so nothing needs
scrolling sideways.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cxifacts import output_files, read_outputs, recovery_errors
from .gpu_usage import GPU_CAPTION, busy_words, gpu_rows
from .timeseries import SERIES_FILE, TimeSeries
from .verdict import run_verdict

log = logging.getLogger(__name__)

PAGE_FILE = "report.html"
ERROR_EVENTS = 100  # events whose peaks are matched again for the position-error histogram
COLOURS = {
    "ok": "#2e7d32",
    "starved": "#b26a00",
    "backlogged": "#c62828",
    "writer-bound": "#c62828",
    "spilling": "#6a1b9a",
}
STYLE = """
body { margin: 0; background: #fafafa; color: #222; font: 15px/1.45 system-ui, sans-serif; }
main { max-width: 940px; margin: 0 auto; padding: 8px 16px 40px; }
h1 { font-size: 22px; margin: 12px 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 18px; margin: 28px 0 4px; border-bottom: 1px solid #ddd; }
p, li, td, th { overflow-wrap: anywhere; }
.verdict { border-left: 10px solid; background: #fff; padding: 10px 16px; margin: 8px 0; }
.verdict .word { font-size: 26px; font-weight: 700; margin: 0; }
.verdict .sentence { margin: 4px 0 0; }
.caption { color: #555; margin: 2px 0 8px; }
img { display: block; max-width: 100%; height: auto; background: #fff; }
table { border-collapse: collapse; width: 100%; background: #fff; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
.note { color: #555; font-style: italic; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{encoded}">'


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


class Page:
    """Sections in order; a figure that fails to draw becomes a note, not a broken page."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def section(self, key: str, title: str, caption: str, body: str) -> None:
        self.parts.append(
            f'<section id="{key}"><h2>{_esc(title)}</h2>'
            f'<p class="caption">{_esc(caption)}</p>{body}</section>'
        )

    def figure(self, key: str, title: str, caption: str, draw: Callable[[], Any]) -> None:
        from .plots import png

        try:
            fig = draw()
            body = _img(png(fig), title) if fig is not None else _note("nothing to draw")
        except Exception as exc:  # noqa: BLE001 - one figure must not cost the whole page
            log.warning("report.html: %s not drawn: %s", title, exc)
            body = _note(f"not drawn: {exc}")
        self.section(key, title, caption, body)


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _verdict_block(judged: dict[str, Any] | None) -> str:
    if judged is None:
        return (
            '<div class="verdict" style="border-color:#777"><p class="word">not judged</p>'
            '<p class="sentence">the run was too short to sample twice</p></div>'
        )
    colour = COLOURS.get(judged["word"], "#333")
    return (
        f'<div class="verdict" style="border-color:{colour}">'
        f'<p class="word" style="color:{colour}">{_esc(judged["word"])}</p>'
        f'<p class="sentence">{_esc(judged["sentence"])}</p>'
        f"<details><summary>evidence</summary>{_table(_evidence(judged['evidence']))}</details>"
        "</div>"
    )


def _evidence(e: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures behind the verdict (monitor/verdict.py: Figures), in words."""

    def pct(*keys: str) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {e[k]:.0%}" for k in keys if k in e)

    def fps(key: str) -> str:
        return "-" if e.get(key) is None else f"{e[key]:.1f}/s"

    store = "-"
    if e.get("store_capacity"):
        store = f"peak {e['store_used_max'] / 1e6:,.0f} of {e['store_capacity'] / 1e6:,.0f} MB"
    return [
        ("judged over", f"{e['span_s']:.1f} s while ingest ran"),
        (
            "rates",
            f"ingest {fps('ingest_fps')}, inference {fps('inference_fps')}, "
            f"writers {fps('writer_fps')}",
        ),
        (
            "could do",
            f"ingest {fps('ingest_capacity_fps')}, inference {fps('inference_capacity_fps')}",
        ),
        ("ingest time", pct("receive", "decode", "put")),
        ("inference time", pct("inference_busy", "inference_blocked", "inference_waiting")),
        ("writers busy", pct("writer_busy")),
        ("queue fill (mean)", pct("q1_fill", "q2_fill")),
        ("object store", f"{store}; spilled {e['spilled_bytes'] / 1e6:,.0f} MB"),
    ] + ([("GPU", busy_words(e["gpu_busy"]))] if e.get("gpu_busy") is not None else [])


def _facts(report: dict[str, Any], summary: dict[str, Any]) -> list[tuple[str, Any]]:
    acc, cfg = report["accounting"], report["config"]
    streaming = max(float(report.get("streaming_s") or 0), 1e-9)
    lost = {k: v for k, v in acc.items() if k.startswith("lost_") and v}
    rows = [
        ("ended by", report["ended_by"]),
        ("exit code", report["exit_code"]),
        (
            "started",
            f"{report['started']} ({report['elapsed_s']:.1f} s, {streaming:.1f} s streaming)",
        ),
        (
            "frames",
            f"{acc['frames_ingested']} ingested, {acc['frames_inferred']} inferred "
            f"({acc['frames_inferred'] / streaming:.1f}/s), "
            f"{acc['frames_rejected_by_inference']} rejected",
        ),
        ("events written", f"{acc['events_written']} ({acc['hits']} hits)"),
        *_latency_rows(report.get("latency")),
        ("accounted", "yes" if acc["accounted"] else f"NO: {lost}"),
        (
            "stages",
            f"{len(report['ingest'])} x {cfg['source']['kind']} ingest, "
            f"{len(report['inference'])} x inference ({cfg['model']['kind']}), "
            f"{len(report['writer'])} x writer ({cfg['writer']['compression']})",
        ),
        ("files", f"{len(summary.get('files', []))} CXI files in {report['output_dir']}"),
    ]
    rows += [(f"{e['role']} {e['id']} failed", e["error"]) for e in report["errors"]]
    return rows


def _latency_rows(latency: dict[str, Any] | None) -> list[tuple[str, str]]:
    """report.json's `latency` (monitor/latency.py) as the facts' row; none for a report
    written before latency was measured, or a run that wrote nothing."""
    if not latency or not latency.get("count"):
        return []

    def three(s: dict[str, Any]) -> str:
        ms = (f"{s[k] * 1e3:,.1f} ms" for k in ("median_s", "p95_s", "max_s"))
        return "median {}, 95th percentile {}, max {}".format(*ms)

    words = f"{three(latency)} over {latency['count']} events"
    minute = latency.get("last_minute") or {}
    if minute.get("count"):
        words += f"; last minute: {three(minute)}"
    return [("latency (arrival to written)", words)]


def render(
    report: dict[str, Any], summary: dict[str, Any], series: TimeSeries, run_dir: Path
) -> str:
    """The page's HTML."""
    from . import plots

    # The run's own verdict: its advice knew the machine (timeseries.jsonl does not keep
    # that); judged again from the samples only when the report has none.
    verdict = report.get("verdict")
    if verdict is None and (judged := run_verdict(series)) is not None:
        verdict = judged.as_dict()
    samples = series.samples
    page = Page()
    page.section("facts", "The run", "what ran and how it ended", _table(_facts(report, summary)))
    page.figure(
        "queues",
        "Queue depth",
        "records in each shard of Q1 (ingest -> inference) and Q2 (inference -> writers); a "
        "queue that stays at its capacity shows the stage after it is the bottleneck",
        lambda: plots.queue_figure(samples),
    )
    page.figure(
        "rates",
        "Rates per stage",
        "frames (events for writers) per second between samples",
        lambda: plots.rates_figure(samples),
    )
    page.figure(
        "shares",
        "Where each actor's time went",
        "over the whole run; ingest waits for input, makes frames (decode, generate or read) "
        "and puts them into Q1; inference runs the model or is blocked on Q2, and otherwise "
        "waits for batches; writers find peaks and write, and otherwise wait on Q2",
        lambda: plots.shares_figure(samples),
    )
    page.figure(
        "busy",
        "Busy fraction per actor over time",
        "ingest: making frames; inference: running the model; writers: finding peaks and writing",
        lambda: plots.busy_figure(samples),
    )
    page.figure(
        "store",
        "Object store",
        "bytes in Ray's object store (all nodes) and bytes spilled to disk since the cluster "
        "started; spilling slows every stage",
        lambda: plots.store_figure(samples),
    )
    if report.get("gpu"):  # inference on a GPU only (monitor/gpu_usage.py)
        page.section("gpu", "GPU", GPU_CAPTION, _table(gpu_rows(report["gpu"])))
    _data_sections(page, report, summary, samples, run_dir)
    head = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>PeakNet run {_esc(report['run_id'])}</title><style>{STYLE}</style></head>"
    )
    return (
        f"{head}<body><main><h1>PeakNet run {_esc(report['run_id'])}</h1>"
        f"{_verdict_block(verdict)}{''.join(page.parts)}</main></body></html>\n"
    )


def _data_sections(
    page: Page, report: dict[str, Any], summary: dict[str, Any], samples: list, run_dir: Path
) -> None:
    """What a scientist looks at first: frames with their peaks, peaks per frame, hit rate,
    and for synthetic frames how many of the injected peaks came back."""
    from . import plots

    cfg = report["config"]
    paths = output_files(run_dir, summary)
    facts = read_outputs(paths)
    if facts.frames:
        page.figure(
            "frames",
            "Frames with their peaks",
            "the written rows with the most peaks among the first rows of each file, found "
            f"peaks circled: {'; '.join(frame.label for frame in facts.frames)}",
            lambda: plots.frames_figure(facts.frames),
        )
    else:
        why = (
            "no frames are stored (writer.images: none): the files hold peak lists only"
            if cfg["writer"]["images"] == "none" or (paths and not facts.images_stored)
            else "no rows were written (no hits, or no files)"
        )
        page.section("frames", "Frames with their peaks", "", _note(why))
    rows_caption = "rows of the CXI files" + (
        ""
        if cfg["writer"]["images"] == "all"
        else " (hits only: non-hits are counted, not written)"
    )
    if facts.peaks_per_row.size:
        page.figure(
            "peaks",
            "Peaks per frame",
            rows_caption,
            lambda: plots.peaks_histogram(facts.peaks_per_row, cfg["writer"]["min_peaks"]),
        )
    else:
        page.section("peaks", "Peaks per frame", rows_caption, _note("no rows written"))
    page.figure(
        "hits",
        "Hit rate over time",
        f"events with at least writer.min_peaks={cfg['writer']['min_peaks']} peaks, per interval",
        lambda: plots.hit_rate_figure(samples),
    )
    for problem in facts.problems:
        page.parts.append(_note(f"unreadable: {problem}"))
    if "recovery" in summary:
        _recovery(page, report, summary["recovery"], paths)


def _recovery(page: Page, report: dict[str, Any], rec: dict[str, Any], paths: list) -> None:
    from ..evaluate import recovery_lines
    from . import plots

    model = report["config"]["model"]
    page.section(
        "recovery",
        "Injected peaks recovered",
        "synthetic frames: the found peaks against the peaks the random source injected",
        "".join(f"<p>{_esc(line)}</p>" for line in recovery_lines(rec, model)),
    )
    errors, events = recovery_errors(report, paths, ERROR_EVENTS)
    if errors is not None and errors.size:
        page.figure(
            "recovery-errors",
            "Position error of recovered peaks",
            f"over the first {events} events",
            lambda: plots.errors_histogram(errors, rec["tolerance_px"]),
        )


def write_page(
    run_dir: Path, report: dict[str, Any], summary: dict[str, Any], series: TimeSeries
) -> Path:
    path = Path(run_dir) / PAGE_FILE
    path.write_text(render(report, summary, series, Path(run_dir)))
    return path


class RunDirError(ValueError):
    """RUN_DIR lacks a file the page is drawn from."""


def render_run_dir(run_dir: str | Path) -> Path:
    """Draw report.html again from a run directory's files; returns its path."""
    run_dir = Path(run_dir)
    docs = {}
    for name in ("report.json", "summary.json", SERIES_FILE):
        if not (run_dir / name).is_file():
            raise RunDirError(f"{run_dir / name} does not exist (is this a run's directory?)")
    try:
        for name in ("report.json", "summary.json"):
            docs[name] = json.loads((run_dir / name).read_text())
        series = TimeSeries.read(run_dir / SERIES_FILE)
    except (OSError, ValueError, TypeError) as exc:
        raise RunDirError(f"{run_dir}: cannot read the run's files: {exc}") from None
    return write_page(run_dir, docs["report.json"], docs["summary.json"], series)
