"""Watching a run: progress lines while it runs, a report when it ends."""

from .progress import Snapshot, format_progress, rate

__all__ = ["Snapshot", "format_progress", "rate"]
