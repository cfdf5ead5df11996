"""What a run shows on the console while it streams.

On a terminal: one compact live display (rich) redrawn every progress interval, with frames
in and out, their rates, queue fill, the producer/consumer ratio, how busy inference is, the
pool, percent done and the verdict. Log lines (the driver's, and the actors' that Ray
forwards) are printed above it instead of tearing it. Anywhere else (Kubernetes logs, a pipe,
tests): the plain progress lines of progress.py, as before.

`live_view` is pure (samples and a verdict in, a renderable out), so what the display shows is
tested without a terminal; `LiveConsole` only draws it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from ..placement import Role
from .progress import ProgressLog, Snapshot
from .timeseries import Sample
from .verdict import Figures, Verdict, figures

BAR_WIDTH = 20
WORD_STYLES = {
    "ok": "bold green",
    "starved": "bold yellow",
    "backlogged": "bold red",
    "writer-bound": "bold red",
    "spilling": "bold magenta",
    "too-short": "bold",
}
# On the CPU, backlogged is what the demo is expected to show (the sentence says so): not red.
CPU_BACKLOGGED_STYLE = "bold yellow"


class PlainConsole:
    """Progress lines, one per change (and a heartbeat), on stdout."""

    def __init__(self, started: float) -> None:
        self.progress = ProgressLog(started)

    def __enter__(self) -> PlainConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def show(self, snap: Snapshot, recent: Sequence[Sample], judged: Verdict | None) -> None:
        line = self.progress.line(snap)
        if line:
            print(line, flush=True)


class QuietConsole(PlainConsole):
    """monitor.console: false."""

    def show(self, snap: Snapshot, recent: Sequence[Sample], judged: Verdict | None) -> None:
        pass


class LiveConsole(PlainConsole):
    """The live display. While it is up, stdout and stderr go through rich's console (rich
    redirects them), and the logging handlers that wrote to the real streams are pointed at
    the redirected ones, so every line lands above the display."""

    def __init__(self, started: float, title: str, console: Any = None) -> None:
        super().__init__(started)
        self.title = title
        self.console = console  # a rich Console; None: the terminal on stdout
        self._live: Any = None
        self._moved: list[tuple[logging.StreamHandler, Any]] = []

    def __enter__(self) -> LiveConsole:
        from rich.console import Console
        from rich.live import Live

        console = self.console or Console()
        self._live = Live(console=console, auto_refresh=False, transient=False)
        before = {id(sys.__stdout__): "stdout", id(sys.__stderr__): "stderr"}
        before.update({id(sys.stdout): "stdout", id(sys.stderr): "stderr"})
        self._live.start()
        after = {"stdout": sys.stdout, "stderr": sys.stderr}
        self._moved = _route_logging({key: after[name] for key, name in before.items()})
        return self

    def __exit__(self, *exc: object) -> None:
        for handler, stream in self._moved:
            handler.setStream(stream)
        self._moved = []
        self._live.stop()

    def show(self, snap: Snapshot, recent: Sequence[Sample], judged: Verdict | None) -> None:
        view = live_view(self.title, snap, recent, judged, self.progress.started)
        self._live.update(view, refresh=True)


def make_console(enabled: bool, started: float, title: str) -> PlainConsole:
    """Live on a terminal, plain lines elsewhere, nothing when the console is off."""
    if not enabled:
        return QuietConsole(started)
    if sys.stdout.isatty():
        return LiveConsole(started, title)
    return PlainConsole(started)


def _route_logging(redirected: dict[int, Any]) -> list[tuple[logging.StreamHandler, Any]]:
    """Point every stream handler writing to a real stdout/stderr at its redirected stream;
    returns (handler, old stream) pairs to restore."""
    moved = []
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler and id(handler.stream) in redirected:
                moved.append((handler, handler.setStream(redirected[id(handler.stream)])))
    return moved


# -- what the display shows (pure) -----------------------------------------------------------
def live_view(
    title: str, snap: Snapshot, recent: Sequence[Sample], judged: Verdict | None, started: float
) -> Any:
    """The display for the newest snapshot (taken at monotonic time `snap.t`; the run
    started at `started`): rates and busy fractions over `recent` (while running the last two
    samples, at the end all of them), the verdict over its own window."""
    from rich.panel import Panel
    from rich.table import Table

    f = figures(recent)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for label, value in _rows(snap, recent[-1] if recent else None, f):
        table.add_row(label, value)
    table.add_row("verdict", verdict_line(judged))
    subtitle = _done(snap, snap.t - started)
    return Panel(table, title=f"[bold]{title}[/]", subtitle=subtitle, title_align="left")


def verdict_line(judged: Verdict | None) -> Any:
    """The verdict row: the word in its colour, then the sentence. Backlogged with inference
    on the CPU is expected (the CPU demo), so it is not shown in alarm red."""
    from rich.text import Text

    if judged is None:
        return Text("(judged after the first samples)", style="dim")
    style = WORD_STYLES.get(judged.word, "bold")
    if judged.word == "backlogged" and "cuda" not in str(judged.evidence.get("device", "cpu")):
        style = CPU_BACKLOGGED_STYLE
    line = Text(judged.word, style=style)
    line.append(f": {judged.sentence}")
    return line


def _rows(snap: Snapshot, sample: Sample | None, f: Figures | None) -> list[tuple[str, Any]]:
    counts = snap.counts

    def count(label: str, key: str, fps: str) -> str:
        rate = f" ({getattr(f, fps):.1f}/s)" if f is not None else ""
        return f"{label} {counts.get(key, 0)}{rate}"

    frames = [
        count("in", "ingested", "ingest_fps"),
        count("inferred", "inferred", "inference_fps"),
        count("written", "written", "writer_fps"),
        f"hits {counts.get('hits', 0)}",
    ]
    rows: list[tuple[str, Any]] = [("frames", "   ".join(frames)), ("queues", _queues(sample))]
    if f is not None:
        rows.append(("producer/consumer", _ratio(f)))
        rows.append(
            (
                "inference",
                f"busy {f.inference_busy:.0%} on {f.device}, waiting {f.inference_waiting:.0%}, "
                f"blocked on Q2 {f.inference_blocked:.0%}; writers busy {f.writer_busy:.0%}",
            )
        )
    if sample is not None:
        rows.append(("pool", _pool(sample.pool)))
        if sample.object_store:
            rows.append(("object store", _store(sample.object_store)))
    return rows


def _bar(fill: float) -> str:
    full = round(max(0.0, min(1.0, fill)) * BAR_WIDTH)
    return "█" * full + "░" * (BAR_WIDTH - full)


def _queues(sample: Sample | None) -> str:
    if sample is None:
        return "-"
    parts = []
    for name, q in sample.queues.items():
        capacity = max(q.get("capacity_items") or 1, 1)
        shards = len(q.get("shard_depths") or []) or q.get("num_shards", 1)
        parts.append(
            f"{name} {_bar(q['depth'] / capacity)} {q['depth']}/{capacity} "
            f"({q.get('bytes', 0) / 1e6:.0f} MB, {shards} shards)"
        )
    return "\n".join(parts)


def _ratio(f: Figures) -> str:
    """Actors on each side of Q1, and what each side could do per second if never held up."""
    actors = f"{f.actors[Role.INGEST]:.0f} ingest : {f.actors[Role.INFERENCE]:.0f} inference actors"
    if f.ingest_capacity_fps and f.inference_capacity_fps:
        ratio = f.ingest_capacity_fps / f.inference_capacity_fps
        return (
            f"{actors}; capacity {f.ingest_capacity_fps:.0f} : {f.inference_capacity_fps:.0f} "
            f"frames/s = {ratio:.2f}"
        )
    return actors


def _pool(pool: dict[str, Any]) -> str:
    if not pool:
        return "-"
    return (
        f"{pool.get('running', 0)} running, {pool.get('starting', 0)} starting, "
        f"{pool.get('retiring', 0)} retiring (desired {pool.get('desired', 0)})"
    )


def _store(store: dict[str, int]) -> str:
    used, cap = store["used_bytes"], max(store["capacity_bytes"], 1)
    return (
        f"{_bar(used / cap)} {used / 1e6:,.0f} of {cap / 1e6:,.0f} MB, "
        f"spilled {store['spilled_bytes'] / 1e6:,.0f} MB"
    )


def _done(snap: Snapshot, elapsed_s: float) -> str:
    elapsed = f"{elapsed_s:.0f} s"
    if not snap.expected:
        return elapsed
    done = snap.counts.get(snap.done_key, 0) / snap.expected
    return f"{done:.0%} done {_bar(done)} {elapsed}"
