"""What a closed CXI file commits: the Results whose events it accounts for.

A writer holds the Results it took from Q2 under leases until they are committed. Committing
is closing a file: before the rename, the file gets a ledger (`/peaknet/committed/...`: the
key and counts of every Result handled since the previous file closed, those with rows in this
file and those without rows, e.g. non-hits), and the rename makes rows and ledger final in one
step. Only then are the Results acknowledged. So

- a writer that dies with a file open leaves a `.part` file whose Results were never
  acknowledged: they go to another writer and are written again, once;
- a writer that dies between the rename and the acknowledgement leaves Results that are
  committed and yet delivered again: the next writer finds their keys in the dead writer's
  ledgers (`LedgerIndex`) and skips them;
- the counts of a dead writer's work are exact: the sum of its closed files' ledgers
  (`committed_counts`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .layout import PROV

LEDGER = f"{PROV}/committed"
LEDGER_COUNTS = "committed_counts"  # file attribute: the summed counts, as JSON
CONSUMER = "writer_consumer"  # file attribute: the writer (queue consumer id) that wrote it


@dataclass
class LedgerEntry:
    """One Result handled by a writer: its key and what it counted."""

    source_id: str
    seq: int
    counts: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)

    @property
    def key(self) -> tuple[str, int]:
        return self.source_id, self.seq


def write_ledger(h5: Any, entries: list[LedgerEntry], consumer: str) -> None:
    """The ledger of `entries` into an open (not yet renamed) HDF5 file."""
    import h5py

    group = h5.require_group(LEDGER)
    group.create_dataset(
        "source_id",
        data=np.array([e.source_id for e in entries], dtype=object),
        dtype=h5py.string_dtype("utf-8"),
    )
    group.create_dataset("seq", data=np.array([e.seq for e in entries], dtype=np.int64))
    group.create_dataset("events", data=np.array([e.counts["events"] for e in entries], np.int64))
    total: Counter = Counter()
    failed: Counter = Counter()
    for entry in entries:
        total.update(entry.counts)
        failed.update(entry.failed)
    h5.attrs[LEDGER_COUNTS] = json.dumps({**total, "failed": dict(failed)}, sort_keys=True)
    h5.attrs[CONSUMER] = consumer


def read_ledger(path: str | Path) -> tuple[set[tuple[str, int]], dict[str, Any], str | None]:
    """(committed keys, summed counts, writer consumer) of a closed file; empty for files
    without a ledger."""
    import h5py

    with h5py.File(path, "r") as f:
        counts = json.loads(f.attrs.get(LEDGER_COUNTS, "{}"))
        consumer = f.attrs.get(CONSUMER)
        if LEDGER not in f:
            return set(), counts, consumer
        sources = f[f"{LEDGER}/source_id"].asstr()[:]
        seqs = f[f"{LEDGER}/seq"][:]
    return {(str(s), int(q)) for s, q in zip(sources, seqs)}, counts, consumer


class LedgerIndex:
    """The keys committed in the closed files of an output directory, read once per file."""

    def __init__(self, output_dir: str | Path, prefix: str) -> None:
        self.output_dir, self.prefix = Path(output_dir), prefix
        self._read: set[Path] = set()
        self._keys: set[tuple[str, int]] = set()

    def contains(self, key: tuple[str, int]) -> bool:
        """Whether a closed file committed `key` (files closed since the last call included)."""
        for path in sorted(self.output_dir.glob(f"{self.prefix}-*.cxi")):
            if path not in self._read:
                self._read.add(path)
                self._keys |= read_ledger(path)[0]
        return tuple(key) in self._keys


def committed_counts(paths: Iterable[str | Path], consumers: set[str]) -> dict[str, Any]:
    """The summed ledger counts of the files written by `consumers` (a dead writer's exact
    counts: what it acknowledged is exactly what its closed files committed)."""
    total: Counter = Counter()
    failed: Counter = Counter()
    for path in paths:
        _, counts, consumer = read_ledger(path)
        if consumer in consumers:
            failed.update(counts.pop("failed", {}))
            total.update(counts)
    return {**total, "failed": dict(failed)}


def summed(entries: Iterable[LedgerEntry]) -> Mapping[str, int]:
    total: Counter = Counter()
    for entry in entries:
        total.update(entry.counts)
    return total
