"""Watching a run: progress lines while it runs, a report when it ends."""

from .progress import ProgressLog, Snapshot, format_progress, rate

__all__ = ["ProgressLog", "Snapshot", "format_progress", "rate"]
