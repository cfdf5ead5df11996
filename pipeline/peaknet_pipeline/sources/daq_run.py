"""DAQ run boundaries at ingest, as pure functions (runtime.service, source.socket.daq_run).

At an XFEL the DAQ starts and stops runs while a service pipeline keeps running. Every event
of a service carries `meta["daq_run"]`, a label that names the folder its files go to
(`[A-Za-z0-9._-]+`), and no batch holds two DAQ runs. A label comes from the stream when it
carries a run field, else from the stream's pauses:

- LCLStreamer's psana2 `run_info` (per event 4 strings: experiment, run start time, run
  number, source identifier; LCLStreamer lclstreamer/event_data_sources/psana2/
  data_sources.py: Psana2RunInfo) -> `<experiment>-r<run number, 4 digits>`, e.g.
  `cxi12345-r0012`. The source identifier differs between streamer ranks and the start time
  adds nothing to (experiment, run number), so neither is part of the label.
- an integer run number (B,) -> `r0012`.
- no field: a pause longer than `gap_s` between messages starts a new DAQ run, labelled by the
  UTC time of its first message, `run-20261206T161900Z` (a restarted service never reuses a
  name). A second run starting within the same second gets `-2`, `-3`, ... appended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

LABEL = re.compile(r"^[A-Za-z0-9._-]+$")
RUN_INFO_COLUMNS = ("experiment", "run_start_time", "run_number", "source_id")
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_part(text: str) -> str:
    """`text` as part of a folder name: other characters become `_`; never empty or dotted
    at the start (a folder `.` or `..`, or a hidden one)."""
    cleaned = UNSAFE.sub("_", str(text).strip()).lstrip(".")
    return cleaned or "unknown"


def run_number_label(number: int) -> str:
    """`r0012` for run 12 (at least 4 digits, so folders sort in run order)."""
    return f"r{int(number):04d}"


def run_info_label(experiment: str, run_number: str) -> str:
    """`cxi12345-r0012` from psana2 run_info's experiment and run number (a string there)."""
    number = str(run_number).strip()
    run = run_number_label(int(number)) if number.isdigit() else f"r{safe_part(number)}"
    return f"{safe_part(experiment)}-{run}"


def gap_label(wall_t: float) -> str:
    """`run-20261206T161900Z`: the UTC second of a DAQ run's first message."""
    return "run-" + datetime.fromtimestamp(wall_t, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def field_labels(values: np.ndarray) -> list[str]:
    """One label per event from a message's run field: (B, 4) run_info strings or (B,)
    integer run numbers. Raises ValueError naming the shape or dtype it cannot read."""
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == len(RUN_INFO_COLUMNS) and arr.dtype.kind in "USO":
        text = arr.astype(str)
        return [run_info_label(row[0], row[2]) for row in text]
    if arr.ndim == 1 and arr.dtype.kind in "iu":
        return [run_number_label(n) for n in arr.tolist()]
    if arr.ndim == 1 and arr.dtype.kind == "f" and np.all(np.isfinite(arr) & (arr == arr // 1)):
        return [run_number_label(int(n)) for n in arr.tolist()]
    raise ValueError(
        f"a DAQ run field must be run_info strings (B, 4) or integer run numbers (B,), "
        f"got {arr.dtype} {arr.shape}"
    )


def segments(labels: list[str]) -> list[tuple[str, int, int]]:
    """Runs of equal labels as (label, start, stop): where a message's events are cut so that
    no batch spans two DAQ runs."""
    cuts: list[tuple[str, int, int]] = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            cuts.append((labels[start], start, i))
            start = i
    return cuts


@dataclass(frozen=True)
class DaqRunState:
    """What labelling the next message needs to know: the current label (None before the
    first message) and how many gap-labelled runs began in its second (for `-2`, `-3`)."""

    label: str | None = None
    same_second: int = 1


def label_message(
    state: DaqRunState,
    count: int,
    run_field: np.ndarray | None,
    quiet_s: float,
    wall_t: float,
    gap_s: float,
) -> tuple[DaqRunState, list[tuple[str, int, int]]]:
    """Label one message of `count` events: (the state after it, its segments).

    `run_field` is the message's run field when one is configured (it decides alone);
    otherwise a message after a pause of `quiet_s` > `gap_s` (or the first message) starts a
    new DAQ run named from `wall_t`, the time it arrived.
    """
    if run_field is not None:
        cuts = segments(field_labels(run_field))
        return DaqRunState(cuts[-1][0]), cuts
    if state.label is not None and quiet_s <= gap_s:
        return state, [(state.label, 0, count)]
    label, same = gap_label(wall_t), 1
    if state.label is not None and state.label.split("-", 2)[:2] == label.split("-", 2)[:2]:
        same = state.same_second + 1
        label = f"{label}-{same}"
    return DaqRunState(label, same), [(label, 0, count)]


def label_array(label: str, count: int) -> np.ndarray:
    """`meta["daq_run"]` of a batch: the label once per event (metadata is per event)."""
    return np.full(count, label)
