"""The run summary: every writer's files and counts merged into one JSON document.

`merge_summaries` is pure; `write_run_summary` adds the file write (atomic: a reader never
sees half a summary). The driver calls `write_run_summary` once the writers have returned.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .stage import COUNTS as SUMMED


def merge_summaries(writer_summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over writers, failures and notes merged by kind, every file listed once.

    `accounted` is True when every event a writer received is a hit, a non-hit or a failure,
    for every writer and in total.
    """
    totals = {key: sum(int(s.get(key, 0)) for s in writer_summaries) for key in SUMMED}
    failed: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    for s in writer_summaries:
        failed.update(s.get("failed", {}))
        notes.update(s.get("notes", {}))
    files = [dict(f) for s in writer_summaries for f in s.get("files", [])]
    files.sort(key=lambda f: f["path"])
    accounted = all(s.get("accounted", False) for s in writer_summaries) and (
        totals["hits"] + totals["non_hits"] + sum(failed.values()) == totals["events"]
    )
    return {
        **totals,
        "failed": dict(sorted(failed.items())),
        "failed_events": sum(failed.values()),
        "accounted": accounted,
        "hit_rate": totals["hits"] / totals["events"] if totals["events"] else 0.0,
        "notes": dict(sorted(notes.items())),
        "files": files,
        "num_files": len(files),
        "busy_s": sum(float(s.get("busy_s", 0.0)) for s in writer_summaries),
        "writers": sorted((dict(s) for s in writer_summaries), key=lambda s: s.get("writer", 0)),
    }


def write_run_summary(
    path: str, writer_summaries: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Merge the per-writer summaries, add `extra` (run id, timings...), write JSON to `path`.

    Keys of `extra` are added at the top level and must not clash with the merged keys.
    Returns the document written.
    """
    doc = merge_summaries(writer_summaries)
    clash = sorted(set(doc) & set(extra or {}))
    if clash:
        raise ValueError(f"write_run_summary: extra keys {clash} clash with summary keys")
    doc.update(extra or {})
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
    os.replace(tmp, path)
    return doc
