"""summary.json: what the run's files hold. (report.json says how the run went.)

`merge_summaries` is pure: the writers' counts and files, merged. A writer that did not
finish (it died, or a hard stop killed it) is counted by what its closed files committed
(`unfinished_writer`, from their ledgers: exact, since what it had not committed went to
another writer). `files_on_disk` lists what is actually there after a hard stop: complete
`.cxi` files with the counts stored in them, and `.cxi.part` files with the events the writers
last reported in each. `write_run_summary` writes the document atomically (a reader never sees
half a summary).

Under runtime.service each DAQ run's folder holds one summary part per writer (and per
reopening by stragglers), `summary-<consumer>[_N].json` (daqrun.py); `merge_daq_run` merges a
folder's parts and `write_daq_run_summary` writes the folder's summary.json from them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .stage import COUNTS as SUMMED

PART = ".part"


def merge_summaries(writer_summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over writers, failures and notes merged by kind, every file listed once.

    Works on finished writers' summaries and on the last stats of writers that did not
    finish (same counters). `accounted` is True when every event a writer received is a hit,
    a non-hit or a failure, for every writer and in total.
    """
    totals = {key: sum(int(s.get(key, 0)) for s in writer_summaries) for key in SUMMED}
    failed: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    for s in writer_summaries:
        failed.update(s.get("failed", {}))
        notes.update(s.get("notes", {}))
    listed = sorted(
        (dict(f) for s in writer_summaries for f in s.get("files", [])), key=lambda f: f["path"]
    )
    accounted = all(s.get("accounted", True) for s in writer_summaries) and (
        totals["hits"] + totals["non_hits"] + sum(failed.values()) == totals["events"]
    )
    return {
        **totals,
        "failed": dict(sorted(failed.items())),
        "failed_events": sum(failed.values()),
        "accounted": accounted,
        "hit_rate": totals["hits"] / totals["events"] if totals["events"] else 0.0,
        "notes": dict(sorted(notes.items())),
        "files": [f for f in listed if not f["path"].endswith(PART)],
        "incomplete_files": [f for f in listed if f["path"].endswith(PART)],
    }


def unfinished_writer(output_dir: str | Path, prefix: str, consumer: str) -> dict[str, Any]:
    """A writer's counts and files from what its closed files committed (ledger.py)."""
    from .ledger import read_ledger

    files, total, failed = [], Counter(), Counter()
    for path in sorted(Path(output_dir).glob(f"{prefix}-*.cxi")):
        _, counts, writer = read_ledger(path)
        if writer != consumer:
            continue
        failed.update(counts.pop("failed", {}))
        total.update(counts)
        files.append(_file_entry(path))
    return {**{k: total[k] for k in SUMMED}, "failed": dict(failed), "files": files}


def _file_entry(path: Path) -> dict[str, Any]:
    import h5py

    with h5py.File(path, "r") as f:
        return {"path": str(path), "events": int(f.attrs["events"]), "hits": int(f.attrs["hits"])}


def files_on_disk(
    output_dir: str | Path, prefix: str, open_files: Mapping[str, int]
) -> tuple[list[dict], list[dict]]:
    """(complete, incomplete) CXI files of `prefix` in `output_dir`, as they are on disk.

    A complete file stores its event and hit counts as attributes when it is closed. An
    incomplete (`.part`) file was still open: `open_files` maps its path to the events its
    writer last reported in it (`events_known`); its HDF5 structure may not be readable.
    """
    import h5py

    complete, incomplete = [], []
    for path in sorted(Path(output_dir).glob(f"{prefix}-*.cxi")):
        entry: dict[str, Any] = {"path": str(path)}
        try:
            with h5py.File(path, "r") as f:
                entry.update(events=int(f.attrs["events"]), hits=int(f.attrs["hits"]))
        except (OSError, KeyError) as exc:
            entry["unreadable"] = str(exc)
        complete.append(entry)
    known = {os.path.abspath(p): n for p, n in open_files.items()}
    for path in sorted(Path(output_dir).glob(f"{prefix}-*.cxi{PART}")):
        events = known.get(os.path.abspath(path))
        incomplete.append({"path": str(path), "events_known": events})
    return complete, incomplete


def write_run_summary(path: str | Path, doc: Mapping[str, Any]) -> None:
    """Write `doc` as JSON to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def daq_run_parts(folder: str | Path) -> list[dict[str, Any]]:
    """The writers' summary parts in a DAQ run's folder, in name order."""
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("summary-*.json"))]


def merge_daq_run(folder: str | Path) -> dict[str, Any]:
    """A DAQ run's summary from the parts its writers wrote when each closed it: totals,
    files and failures as `merge_summaries` gives them, the run's label, its first and last
    event over all writers, and the writers (queue consumer ids) that wrote it."""
    parts = daq_run_parts(folder)
    doc = merge_summaries(parts)
    return {
        "daq_run": parts[0]["daq_run"] if parts else Path(folder).name,
        "first_t": min((p["first_t"] for p in parts), default=None),
        "last_t": max((p["last_t"] for p in parts), default=None),
        "writers": sorted({p["consumer"] for p in parts}),
        "parts": len(parts),
        **doc,
    }


def write_daq_run_summary(folder: str | Path) -> dict[str, Any]:
    """Merge a DAQ run folder's parts into its summary.json (atomically); returns it."""
    doc = merge_daq_run(folder)
    write_run_summary(Path(folder) / "summary.json", doc)
    return doc
