"""`peaknet-pipeline push --daq-runs`: what marks each DAQ run in the messages it sends.

A DAQ stops and starts runs while a service pipeline (runtime.service) keeps running; the
pusher stands in for it: N runs of --num-frames frames per stream, with pauses between them,
and per message a run field: psana2 `run_info` as LCLStreamer's NPZ serializer carries it
(Psana2RunInfo: experiment, run start time, run number, source identifier, all strings), an
integer run number, or nothing (LCLStreamer's HDF5 serializer cannot carry run_info, so an
HDF5 stream shows a new run only as a pause).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator

import numpy as np

# Where the run field goes: the psana2 run_info data source's usual name in LCLStreamer
# configs, and an integer run number beside the other datasets.
RUN_FIELDS = {
    ("npz", "run_info"): "run_info",
    ("npz", "run_number"): "run_number",
    ("hdf5", "run_number"): "/data/run_number",
}


def run_field_values(
    kind: str, count: int, run_number: int, experiment: str, started: float
) -> np.ndarray | None:
    """One message's DAQ run field: psana2 run_info rows (experiment, run start time, run
    number, source identifier: strings, as LCLStreamer's Psana2RunInfo gives them), an
    integer run number per event, or None."""
    if kind == "run_info":
        source = f"exp={experiment},run={run_number}"
        row = [experiment, str(int(started)), str(run_number), source]
        return np.array([row] * count, dtype=str)
    if kind == "run_number":
        return np.full(count, run_number, dtype=np.int64)
    return None


def check_daq_run_options(args: argparse.Namespace) -> str | None:
    """What is wrong with the DAQ run options, in one line naming the option; None if fine."""
    runs, field = args.daq_runs, args.daq_run_field
    if runs < 1:
        return f"--daq-runs must be at least 1, got {runs}"
    if args.daq_run_gap_s < 0:
        return f"--daq-run-gap-s must be >= 0, got {args.daq_run_gap_s}"
    if field == "run_info" and args.format == "hdf5":
        return (
            "--daq-run-field run_info needs --format npz: LCLStreamer's HDF5 serializer cannot "
            "carry run_info's strings (h5py has no conversion for NumPy unicode arrays); with "
            "hdf5 use --daq-run-field run_number or none (pauses only)"
        )
    if runs > 1 and args.num_frames == 0:
        return "--daq-runs > 1 needs --num-frames > 0 (frames per stream in each DAQ run)"
    if args.pool and (runs > 1 or field != "none"):
        return "--pool re-sends the same messages: it cannot send --daq-runs or --daq-run-field"
    return None


def run_ids(
    args: argparse.Namespace, stream: int, streams: int
) -> Iterator[tuple[int, Iterator[int]]]:
    """(DAQ run index, its event ids) of stream `stream` of `streams`: ids unique across
    streams and runs (stream i sends i*num_frames*daq_runs ...)."""
    count, runs = args.num_frames, args.daq_runs
    if not count:  # endless: interleaved, still unique across streams (one DAQ run)
        yield 0, itertools.count(stream, streams)
        return
    first = stream * count * runs
    for run in range(runs):
        yield run, iter(range(first + run * count, first + (run + 1) * count))


def add_daq_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The --daq-run* options of `peaknet-pipeline push`."""
    add = parser.add_argument
    add(
        "--daq-runs",
        type=int,
        default=1,
        help="DAQ runs to send, each --num-frames frames per stream, with pauses between.",
    )
    add(
        "--daq-run-gap-s",
        type=float,
        default=15.0,
        help="Pause between DAQ runs, in seconds (a service without a run field needs more "
        "than its source.socket.daq_run.gap_s, 10 s by default).",
    )
    add(
        "--daq-run-field",
        choices=["run_info", "run_number", "none"],
        default="none",
        help="What marks a DAQ run in each message: psana2 run_info (npz only: array "
        "run_info), an integer run number (/data/run_number or run_number), or none "
        "(only the pauses, as LCLStreamer's HDF5 serializer).",
    )
    add("--daq-run-first", type=int, default=1, help="Run number of the first DAQ run.")
    add("--experiment", default="cxi12345", help="Experiment name sent in run_info.")
