"""`peaknet-pipeline push`: a stand-in for LCLStreamer, to feed the socket source.

It sends what LCLStreamer sends (wire.py): zmq PUSH with a send high-water mark of 5 and
LINGER 0 while streaming (or nng Push0), connecting to the consumer by default. Frames are
synthetic (sources.random.FrameGenerator: peaks at known positions) or replayed from an
HDF5/CXI file. Each address is one stream with its own thread and `--num-frames` frames.

One deliberate difference: LCLStreamer closes with LINGER 0, which discards messages still
queued. This tool waits up to `--linger-s` at exit until they are on the wire (zmq: LINGER
then context term; nng: the pipes' sent-message counters), so a test can count every frame.
While it runs it says on stderr when a stream has no receiver and how far each stream got
(push_report.py); at exit it says which streams never had a receiver (exit code 3).
Event ids are unique across streams (stream i sends ids i*num_frames ...) and travel in an
extra field (`/data/event_id` or `event_id`), except with `--pool`, which re-sends a few
pre-encoded messages to make a sender cheap enough for benchmarks.

DAQ runs, to feed a service (runtime.service): `--daq-runs N` sends N runs of `--num-frames`
frames per stream, with a pause of `--daq-run-gap-s` between them, as a DAQ that stops and
starts runs. `--daq-run-field` says what marks them: `run_info` (NPZ only: LCLStreamer's
psana2 run_info, 4 strings per event, which its HDF5 serializer cannot carry), `run_number`
(an integer per event, HDF5 or NPZ), or `none` (only the pauses, as LCLStreamer's HDF5).
No message holds two runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..config import RandomSourceConfig, SocketSourceConfig
from .pacing import pace
from .push_report import PROGRESS_EVERY_S, Reporter, describe, summarize, undelivered_line
from .push_runs import (
    RUN_FIELDS,
    add_daq_run_arguments,
    check_daq_run_options,
    run_field_values,
    run_ids,
)
from .transport import open_push

PUSH_EXTRA = {"hdf5": {"event_id": "/data/event_id"}, "npz": {"event_id": "event_id"}}
DEFAULT_ADDRESS = "tcp://127.0.0.1:12321"
TICK_S = 0.2  # how often the main thread looks at the streams and reports

EXIT_CODES = """exit codes:
  0    every message was sent and left the socket (a receiver took it)
  1    a receiver connected, but messages still queued at exit may be lost (--linger-s
       expired, e.g. the receiver went away), or a stream failed
  2    bad options, or a socket could not be opened
  3    no receiver ever connected to an address: its queued messages were not delivered
  130  stopped by Ctrl-C (a second Ctrl-C quits without waiting for queued messages)

--num-frames counts per stream: two --address options send twice as many frames."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help (none shown for flags and unset options), and the
    exit codes laid out as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


PARSER_OPTIONS: dict[str, Any] = {
    "description": __doc__.split("\n")[0],
    "epilog": EXIT_CODES,
    "formatter_class": HelpFormatter,
}


def wire_config(fmt: str, run_field: str = "none") -> SocketSourceConfig:
    """The field layout the pusher writes: LCLStreamer's defaults plus the event id, and the
    DAQ run field when one is sent (the pipeline reads it with the same
    `source.socket.daq_run.field`)."""
    layout: dict[str, Any] = {"format": fmt, "wavelength_unit": "nm"}
    layout[fmt] = {"extra": PUSH_EXTRA[fmt]}
    if run_field != "none":
        layout["daq_run"] = {"field": RUN_FIELDS[(fmt, run_field)]}
    return SocketSourceConfig.model_validate(layout)


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `peaknet-pipeline push` (also `python -m peaknet_pipeline.sources.push`)."""
    add = parser.add_argument
    add(
        "--address",
        action="append",
        help=f"Stream address, repeatable: one stream each (default: {DEFAULT_ADDRESS}).",
    )
    add("--transport", choices=["zmq", "nng"], default="zmq", help="zmq PUSH or nng Push0.")
    add(
        "--mode",
        choices=["connect", "bind"],
        default="connect",
        help="connect to a binding consumer (LCLStreamer's usual role) or bind and wait.",
    )
    add("--format", choices=["hdf5", "npz"], default="hdf5", help="Message format.")
    add("--dtype", choices=["float32", "float64"], default="float32", help="Pixel dtype sent.")
    add("--batch-size", type=int, default=8, help="Frames per message (the last may be short).")
    add(
        "--num-frames",
        type=int,
        default=64,
        help="Frames sent to each --address (per stream, not in total); 0 sends until Ctrl-C "
        "(with --replay: the file once).",
    )
    add("--rate-hz", type=float, default=0.0, help="Frames per second per stream; 0: no limit.")
    add(
        "--shape",
        type=int,
        nargs="+",
        default=[1, 256, 256],
        metavar="N",
        help="C H W (sent as B,C,H,W) or H W (sent as B,H,W). Ignored with --replay.",
    )
    add("--peaks-per-frame", type=int, default=20, help="Peaks injected per synthetic frame.")
    add("--seed", type=int, default=0, help="Seed of the synthetic frames.")
    add("--replay", metavar="FILE", help="Send frames from this HDF5/CXI file instead.")
    add("--dataset", default="/entry_1/data_1/data", help="Frames dataset of --replay.")
    add("--wavelength-nm", type=float, default=0.1305, help="Wavelength sent, in nm.")
    add(
        "--timestamp",
        choices=["float64", "uint64", "string"],
        default="float64",
        help="Timestamp encoding: seconds, (sec << 32) | nsec, or ISO strings.",
    )
    add(
        "--compression",
        choices=["none", "gzip", "lzf", "bitshuffle_lz4", "bitshuffle_zstd", "zstd"],
        default="none",
        help="HDF5 filter; for npz any value but none means savez_compressed.",
    )
    add(
        "--pad-to",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="npz: zero-pad frames centred and send detector_data_original_shape.",
    )
    add(
        "--pool",
        type=int,
        default=0,
        help="Pre-encode this many messages and cycle them (cheap sender; ids repeat).",
    )
    add("--send-hwm", type=int, default=5, help="Send high-water mark (LCLStreamer: 5).")
    add(
        "--linger-s",
        type=float,
        default=30.0,
        help="Longest wait at exit for queued messages to reach a receiver.",
    )
    add(
        "--progress-s",
        type=float,
        default=PROGRESS_EVERY_S,
        help="Seconds between progress lines on stderr when it is not a terminal (a terminal "
        "gets one live line); 0: none.",
    )
    add("--json", action="store_true", help="Print the summary as one JSON object.")
    add_daq_run_arguments(parser)


# -- frames ------------------------------------------------------------------------------------
def frame_batches(
    args: argparse.Namespace, stream: int
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(frames, event ids, DAQ run index) batches of one stream; frames are (B, C, H, W) or
    (B, H, W). A batch never holds two DAQ runs."""
    runs = run_ids(args, stream, len(args.address or [DEFAULT_ADDRESS]))
    if args.replay:
        yield from _replayed(args, runs)
        return
    shape = list(args.shape) if len(args.shape) == 3 else [1, *args.shape]
    cfg = RandomSourceConfig(
        frame_shape=shape,
        dtype=args.dtype,
        batch_size=args.batch_size,
        peaks_per_frame=args.peaks_per_frame,
        seed=args.seed,
        pool_size=4,
    )
    from .random import FrameGenerator

    generator = FrameGenerator(cfg)
    for run, ids in runs:
        while chunk := list(itertools.islice(ids, args.batch_size)):
            frames = generator.batch(np.array(chunk))
            frames = frames if len(args.shape) == 3 else frames[:, 0]
            yield frames, np.array(chunk, dtype=np.int64), run


def _replayed(
    args: argparse.Namespace, runs: Iterator[tuple[int, Iterator[int]]]
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    import h5py
    import hdf5plugin  # noqa: F401 - the pipeline's own CXI frames are bitshuffle-compressed

    with h5py.File(args.replay, "r") as f:
        if args.dataset not in f:
            raise KeyError(f"--replay {args.replay}: no dataset {args.dataset!r}")
        data = f[args.dataset]
        total = data.shape[0]
        if args.num_frames == 0:
            runs = iter([(0, iter(range(total)))])
        for run, ids in runs:
            while chunk := list(itertools.islice(ids, args.batch_size)):
                rows = np.array(chunk) % total
                frames = np.stack([data[int(r)] for r in rows])
                yield frames.astype(args.dtype, copy=False), np.array(chunk, dtype=np.int64), run


def timestamps(kind: str, n: int) -> np.ndarray:
    """Now, in one of the encodings streamers use; decoders must keep each one lossless."""
    now = time.time_ns()
    if kind == "uint64":
        return np.full(n, ((now // 10**9) << 32) | (now % 10**9), dtype=np.uint64)
    if kind == "string":
        text = datetime.fromtimestamp(now / 1e9, tz=timezone.utc).isoformat()
        return np.array([text] * n)
    return np.full(n, now / 1e9, dtype=np.float64)


def messages(
    args: argparse.Namespace,
    stream: int,
    before_run: Callable[[int, int], bool] = lambda last, run: True,
) -> Iterator[tuple[bytes, int, int]]:
    """Encoded messages of one stream with their frame counts and DAQ run indexes.
    `before_run(last, run)` is called when a DAQ run's first message is due, before it is
    made, so that its timestamps and its run start time come after the pause the caller takes
    there (a pooled message keeps the time it was made); False ends the stream."""
    from .wire import DAQ_RUN_FIELD, encode

    cfg = wire_config(args.format, args.daq_run_field)
    pad = tuple(args.pad_to) if args.pad_to else None
    started: dict[int, float] = {}  # DAQ run index -> its start time (run_info's second column)

    def encoded_batch(frames: np.ndarray, ids: np.ndarray, run: int) -> tuple[bytes, int, int]:
        meta = {
            "timestamp": timestamps(args.timestamp, len(ids)),
            "wavelength_nm": np.full(len(ids), args.wavelength_nm),
            "event_id": ids,
        }
        number, begun = args.daq_run_first + run, started.setdefault(run, time.time())
        field = run_field_values(args.daq_run_field, len(ids), number, args.experiment, begun)
        if field is not None:
            meta[DAQ_RUN_FIELD] = field
        return encode(frames, meta, cfg, args.compression, pad), len(ids), run

    def run_by_run(items: Iterable[tuple]) -> Iterator[tuple]:
        """`items` (their DAQ run index last), calling before_run as each run begins."""
        current = 0
        for item in items:
            if item[-1] != current:
                if not before_run(current, item[-1]):
                    return
                current = item[-1]
            yield item

    if not args.pool:
        for frames, ids, run in run_by_run(frame_batches(args, stream)):
            yield encoded_batch(frames, ids, run)
        return
    pool = [encoded_batch(*b) for b in itertools.islice(frame_batches(args, stream), args.pool)]

    def pooled() -> Iterator[tuple[bytes, int, int]]:
        sent = 0  # whole pooled messages until at least --num-frames
        for buf, n, run in itertools.cycle(pool):
            if args.num_frames and sent >= args.num_frames:
                return
            sent += n
            yield buf, n, run

    yield from run_by_run(pooled())


# -- streams -----------------------------------------------------------------------------------
def new_counts() -> dict[str, Any]:
    """One stream's counters: written by its thread, read by the reporter as it goes."""
    return {"messages": 0, "frames": 0, "bytes": 0, "send_s": 0.0, "closed": False}


def run_stream(
    args: argparse.Namespace,
    stream: int,
    sender: Any,
    stop: threading.Event,
    counts: dict[str, Any],
    say: Callable[[str], None],
) -> None:
    """Send one stream's messages, paced to --rate-hz, counting into `counts`; pauses
    --daq-run-gap-s between DAQ runs (pacing starts again after each pause)."""
    t0 = None  # from the first message ready: set-up (frame pool, --pool encoding) excluded
    paced = {"t0": None, "frames": 0}  # pacing within the current DAQ run

    def pause(last: int, run: int) -> bool:
        say(
            f"push: stream {stream}: DAQ run {args.daq_run_first + last} sent; "
            f"pausing {args.daq_run_gap_s:g} s"
        )
        paced.update(t0=None, frames=0)
        return not stop.wait(args.daq_run_gap_s)

    try:
        for buf, n, _ in messages(args, stream, before_run=pause):
            t0 = time.monotonic() if t0 is None else t0
            paced["t0"] = paced["t0"] or time.monotonic()
            pace(stop, paced["t0"], paced["frames"], args.rate_hz)
            paced["frames"] += n
            t_send = time.perf_counter()
            if not sender.send(buf, stop):
                break
            counts["send_s"] += time.perf_counter() - t_send
            counts["messages"] += 1
            counts["frames"] += n
            counts["bytes"] += len(buf)
        counts["elapsed_s"] = time.monotonic() - t0 if t0 is not None else 0.0
    finally:
        say(
            f"push: stream {stream}: {counts['messages']} messages sent; waiting up to "
            f"{args.linger_s} s for delivery"
        )
        t_close = time.monotonic()
        counts["delivered"] = sender.close(args.linger_s)
        counts["linger_s"] = time.monotonic() - t_close
        counts["ever_connected"] = sender.ever_connected
        counts["closed"] = True


def push_main(args: argparse.Namespace) -> int:
    """Run the pusher; the exit code is one of EXIT_CODES."""
    if args.pad_to and args.format != "npz":
        print("push: --pad-to needs --format npz", file=sys.stderr)
        return 2
    if len(args.shape) not in (2, 3):
        print(f"push: --shape takes C H W or H W, got {args.shape}", file=sys.stderr)
        return 2
    problem = check_daq_run_options(args)
    if problem:
        print(f"push: {problem}", file=sys.stderr)
        return 2
    senders = _open_senders(args)
    if senders is None:
        return 2
    for i, sender in enumerate(senders):
        if args.mode == "bind":
            print(f"push: stream {i} bound at {sender.endpoint}", flush=True)
    counts = [new_counts() for _ in senders]
    live = sys.stderr.isatty()
    total = args.num_frames * args.daq_runs  # frames per stream, all DAQ runs together
    reporter = Reporter(senders, counts, total, sys.stderr, live, args.progress_s)
    stop = threading.Event()
    done = [threading.Event() for _ in senders]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            run_stream(args, i, senders[i], stop, counts[i], reporter.say)
        except BaseException as exc:  # reported below; the other streams are stopped
            errors.append(exc)
            stop.set()
        finally:
            done[i].set()

    for i in range(len(senders)):
        threading.Thread(target=work, args=(i,), daemon=True).start()
    try:
        interrupted = _watch(done, reporter, stop, args.linger_s)
    except KeyboardInterrupt:
        reporter.finish()
        print("push: stopped at once; queued messages discarded", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Streams may still be inside a send or a linger; tearing the interpreter down under
        # them crashes nng, so leave without it.
        os._exit(130)
    reporter.finish()
    if errors:
        print(f"push: failed: {errors[0]!r}", file=sys.stderr)
        return 1
    addresses = [sender.endpoint for sender in senders]
    summary = summarize(counts, addresses)
    for i, address in enumerate(addresses):
        if address in summary["no_receiver"]:
            print(undelivered_line(i, address, counts[i]), file=sys.stderr, flush=True)
    print(json.dumps(summary) if args.json else describe(summary), flush=True)
    if interrupted:
        return 130
    return 0 if summary["delivered"] else (3 if summary["no_receiver"] else 1)


def _open_senders(args: argparse.Namespace) -> list[Any] | None:
    """One socket per address; None (said on stderr, the others closed) if one cannot open."""
    senders: list[Any] = []
    for address in args.address or [DEFAULT_ADDRESS]:
        try:
            senders.append(open_push(args.transport, address, args.mode, args.send_hwm))
        except OSError as exc:
            print(f"push: {exc}", file=sys.stderr)
            for sender in senders:
                sender.close(0.0)
            return None
    return senders


def _watch(
    done: list[threading.Event], reporter: Reporter, stop: threading.Event, linger_s: float
) -> bool:
    """Report until every stream is done; True if Ctrl-C stopped them (a second one raises).
    Events, not Thread.join: after a join interrupted by Ctrl-C, is_alive() was seen to return
    False for a stream thread still running (Python 3.11)."""
    interrupted = False
    while not all(d.is_set() for d in done):
        try:
            next(d for d in done if not d.is_set()).wait(TICK_S)
            reporter.tick(time.monotonic())
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            stop.set()
            reporter.say(
                f"push: stopping; waiting up to {linger_s} s for queued messages "
                "(Ctrl-C again to quit at once)"
            )
    return interrupted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peaknet-pipeline push", **PARSER_OPTIONS)
    add_push_arguments(parser)
    return push_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
