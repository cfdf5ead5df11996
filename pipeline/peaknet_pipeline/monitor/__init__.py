"""Watching a run: progress lines while it runs, a report when it ends."""

from .progress import ProgressLog, Snapshot, format_progress, rate, snapshot_of
from .timeseries import Sample, TimeSeries

__all__ = [
    "ProgressLog",
    "Sample",
    "Snapshot",
    "TimeSeries",
    "format_progress",
    "rate",
    "snapshot_of",
]
