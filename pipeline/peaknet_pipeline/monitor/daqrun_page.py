"""The pages of a service's DAQ runs: each run's report.html, and the service's index.html.

Made from the same pieces as the whole run's page (page.py: sections, tables, figures that
become a note if they fail to draw; plots.py), with the run's own figures: its frames and
hits, its span, its files, and the service's rates and hit rate over that span. Like the
run's page, self-contained (figures embedded, no network) and one column wide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cxifacts import output_files, read_outputs
from .page import STYLE, Page, _esc, _note, _table


def _head(title: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head>"
    )


def _facts(report: Mapping[str, Any]) -> list[tuple[str, Any]]:
    files = report["files"]
    rows = [
        ("service", report["service"]),
        ("start", report["start"] or "-"),
        ("end", report["end"] or "-"),
        ("duration", "-" if report["duration_s"] is None else f"{report['duration_s']:.1f} s"),
        ("frames", report["frames"]),
        ("hits", f"{report['hits']} ({report['hit_rate']:.1%})"),
        ("files", f"{len(files)} CXI files: {', '.join(files)}" if files else "none"),
        ("complete", "yes" if report["complete"] else "NO: a .part file is left"),
    ]
    if report["failed_events"]:
        rows.append(("failed in writers", report["failed_events"]))
    if report["finalised"] > 1:
        rows.append(("finalised", f"{report['finalised']} times (late frames came)"))
    return rows


def daq_run_html(
    report: Mapping[str, Any], summary: Mapping[str, Any], samples: Sequence[Any], folder: Path
) -> str:
    """One DAQ run's report.html."""
    from . import plots

    page = Page()
    page.section("facts", "The DAQ run", "what its files hold", _table(_facts(report)))
    page.figure(
        "rates",
        "Rates over its span",
        "the service's frames per second while this DAQ run streamed",
        lambda: plots.rates_figure(samples),
    )
    page.figure(
        "hits",
        "Hit rate over its span",
        "hits / events written, per interval",
        lambda: plots.hit_rate_figure(samples),
    )
    facts = read_outputs(output_files(folder, dict(summary)))
    if facts.frames:
        page.figure(
            "frames",
            "Frames with their peaks",
            "; ".join(frame.label for frame in facts.frames),
            lambda: plots.frames_figure(facts.frames),
        )
    if facts.peaks_per_row.size:
        page.figure(
            "peaks",
            "Peaks per row",
            "rows of its CXI files",
            lambda: plots.peaks_histogram(facts.peaks_per_row, 0),
        )
    for problem in facts.problems:
        page.parts.append(_note(f"unreadable: {problem}"))
    title = f"DAQ run {report['daq_run']}"
    return (
        f"{_head(title)}<body><main><h1>{_esc(title)}</h1>"
        f'<p><a href="../index.html">all DAQ runs of this service</a></p>'
        f"{''.join(page.parts)}</main></body></html>\n"
    )


def index_html(doc: Mapping[str, Any]) -> str:
    """The service's index.html: every DAQ run, newest first, each linking its report."""
    head = "".join(
        f"<th>{h}</th>" for h in ("DAQ run", "start", "end", "frames", "hits", "hit rate")
    )
    rows = []
    for e in doc["runs"]:
        link = f'<a href="{_esc(e["folder"])}/report.html">{_esc(e["daq_run"])}</a>'
        cells = [e.get("start") or "-", e.get("end") or "-", e.get("frames"), e.get("hits")]
        rate = f"{(e.get('hit_rate') or 0.0):.1%}"
        rows.append(f"<tr><td>{link}</td>{''.join(f'<td>{_esc(c)}</td>' for c in cells)}")
        rows[-1] += f"<td>{rate}</td></tr>"
    title = f"Service {doc['service']}"
    totals = (
        f"{doc['daq_runs']} DAQ runs, {doc['frames']} frames, {doc['hits']} hits; "
        f"updated {doc['updated']}"
    )
    return (
        f"{_head(title)}<body><main><h1>{_esc(title)}</h1><p>{_esc(totals)}</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table></main></body></html>\n"
    )
