"""Socket ingest: LCLStreamer batches over zmq PULL or nng Pull0 into Q1, one actor per address.

A receive thread owns the socket and hands raw messages to `batches()` through a small bounded
inbox, so receiving the next message overlaps decoding this one. Back-pressure is a chain of
bounded buffers: a full Q1 blocks the put, the inbox fills, the receive thread stops reading,
the socket's high-water mark and TCP buffers fill, and the streamer's blocking send waits.
Nothing is read and then dropped: on stop (or max_frames) the receive thread stops reading and
every message it had already received is still ingested. Only a stream abandoned by an error
or a sealed Q1 discards what it held, counted as `discarded_at_stop` (and the run then fails
its accounting). Messages still inside the transport's buffers were never received.

Each message becomes one Q1 batch, or several when it holds more than
`frames_per_message` frames (the object-store budget sizes a batch by that setting).

Every event gets an `event_id`: the message's own (an `extra` field named event_id) or, when
the message has none, its position in this actor's stream (0, 1, ... in arrival order).

A stream has no end-of-stream message: it ends on `idle_timeout_s` after the first message,
`max_frames`, `stop()`, or `start_timeout_s` if nothing ever arrives. Every wait is a short
timeout in a loop that checks the stop flag, so `stop()` is prompt and nothing recurses.

Under `runtime.service` neither timeout applies: the stream ends only on `stop()` (or
`max_frames`), and while idle it says "waiting for data on ADDRESS" after 10 s, then every
60 s. Each event gets `meta["daq_run"]` (daq_run.py): from the message's run field when
`source.socket.daq_run.field` is set, else from pauses longer than `daq_run.gap_s`, measured
on the socket (time waiting for a message, not time the inbox was full). A message that holds
two DAQ runs is cut between them, so no batch spans two.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..config import SocketSourceConfig
from ..nvtx import nvtx_range
from ..queue import EndOfStream
from ..records import ARRIVAL_T
from ..stats import SocketStats
from .base import IngestActor
from .daq_run import DaqRunState, label_array, label_message
from .transport import POLL_S, PullSocket, open_pull
from .wire import DAQ_RUN_FIELD, BadMessageLog, Decoder, WireError

log = logging.getLogger(__name__)

INBOX_MESSAGES = 2  # raw messages between the receive thread and the decoder
WAITING_LOG_S = 10.0  # while no message arrives, say so this often
SERVICE_WAITING_FIRST_S = 10.0  # a service says it waits after this long without data,
SERVICE_WAITING_EVERY_S = 60.0  # then this often: a pause between DAQ runs may last hours
HALTED = "halted"  # the receive thread's end when asked to stop reading


def split_message(
    images: np.ndarray, meta: dict[str, np.ndarray], frames_per_batch: int
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """A message's frames as batches of at most `frames_per_batch`
    (source.socket.frames_per_message): the object-store budget sizes a Q1 batch by that
    setting, so no batch may hold more. Every metadata array has one entry per frame."""
    total = images.shape[0]
    if total <= frames_per_batch:
        yield images, meta
        return
    for start in range(0, total, frames_per_batch):
        stop = start + frames_per_batch
        yield images[start:stop], {key: value[start:stop] for key, value in meta.items()}


def service_waiting_due(idle_s: float, said: int) -> bool:
    """Whether a service idle for `idle_s`, having said so `said` times since its last
    message, says it again: after 10 s, then every 60 s (never once a poll)."""
    return idle_s >= SERVICE_WAITING_FIRST_S + said * SERVICE_WAITING_EVERY_S


# -- the receive thread ------------------------------------------------------------------------
class Receiver:
    """Owns one open socket in its own thread; moves messages into a bounded inbox and decides
    when the stream has gone quiet. Idle time counts only while waiting on the socket, not
    while the inbox is full (that is back-pressure, not silence). While nothing arrives it says
    so every `WAITING_LOG_S`, so an operator can tell a quiet stream from a stuck pipeline.
    The inbox's last item is the end-of-stream token: why it stopped, or the error that did."""

    def __init__(
        self,
        name: str,
        cfg: SocketSourceConfig,
        sock: PullSocket,
        halt: threading.Event,
        abandon: threading.Event,
        nvtx: bool = False,
        service: bool = False,
    ) -> None:
        self.name = name
        self.nvtx = nvtx
        self.service = service  # runtime.service: no timeout ends the stream
        self.cfg = cfg
        self.sock = sock
        self.endpoint = sock.endpoint
        self.halt = halt  # stop reading; hand over what was received
        self.abandon = abandon  # nobody drains the inbox any more
        self.inbox: queue.Queue = queue.Queue(maxsize=INBOX_MESSAGES)
        self.messages = 0
        self.bytes = 0
        self.discarded = 0  # received, then the stream ended before it was handed over

    def run(self) -> None:
        try:
            self._hand_over(self._receive(self.sock))
        except Exception as exc:  # noqa: BLE001 - handed to the actor, which raises it
            self._hand_over(EndOfStream("error", exc))
        finally:
            self.sock.close()

    def _receive(self, sock: PullSocket) -> EndOfStream:
        """Receive until halted or timed out. Each message is handed over as (frame, buffer,
        seconds the socket was quiet before it, its arrival time in UTC seconds)."""
        cfg, started = self.cfg, time.monotonic()
        last = said = started
        times_said = 0  # service: "waiting" lines since the last message
        log.info("%s: waiting for data on %s", self.name, self.endpoint)
        while not self.halt.is_set():
            with nvtx_range("receive", self.nvtx):
                got = sock.recv()
            if got is None:
                now = time.monotonic()
                if self.service:
                    if service_waiting_due(now - last, times_said):
                        times_said += 1
                        self._say_service_waiting(now - last)
                    continue
                if now - said >= WAITING_LOG_S:
                    said = now
                    self._say_waiting(now - last)
                if (
                    not self.messages
                    and cfg.start_timeout_s
                    and now - started > cfg.start_timeout_s
                ):
                    return EndOfStream(f"start timeout (no message within {cfg.start_timeout_s} s)")
                if self.messages and cfg.idle_timeout_s and now - last > cfg.idle_timeout_s:
                    return EndOfStream(f"idle timeout (no message for {cfg.idle_timeout_s} s)")
                continue
            arrived = time.monotonic()
            self.messages += 1
            self.bytes += got[1].nbytes
            times_said = 0
            if not self._hand_over((*got, arrived - last, time.time())):
                self.discarded += 1
                break
            last = time.monotonic()
        return EndOfStream(HALTED)

    def _say_service_waiting(self, idle_s: float) -> None:
        since = f" (no data for {idle_s:.0f} s)" if self.messages else ""
        log.info("%s: waiting for data on %s%s", self.name, self.endpoint, since)

    def _say_waiting(self, idle_s: float) -> None:
        ends = self.cfg.idle_timeout_s if self.messages else self.cfg.start_timeout_s
        limit = f"; the stream ends after {ends:g} s" if ends else ""
        what = f"no data for {idle_s:.0f} s" if self.messages else "still waiting for data"
        log.info("%s: %s on %s%s", self.name, what, self.endpoint, limit)

    def _hand_over(self, item: Any) -> bool:
        """Put into the inbox, waiting while it is full; False if the stream was abandoned."""
        while not self.abandon.is_set():
            try:
                self.inbox.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False


# -- the ingest actor --------------------------------------------------------------------------
class SocketSource(IngestActor):
    """Ingest actor for one address of `source.socket.addresses` (the `index`-th)."""

    def prepare(self) -> None:
        self.scfg = self.cfg.source.socket
        self.address = self.scfg.addresses[self.index]
        self.decode = Decoder(self.scfg)
        self.bad = BadMessageLog(self.source_id, log)
        self._halt = threading.Event()
        self._abandon = threading.Event()
        self._receiver: Receiver | None = None
        self.reason = "not started"
        self._discarded = 0
        self._decode_s = 0.0
        self._zero_logged = False
        self._numbering_logged = False
        self.service = self.cfg.runtime.service
        self._daq_run = DaqRunState()

    def open(self) -> None:
        """Bind (or dial) now, so a port in use fails the start, naming the address."""
        cfg = self.scfg
        sock = open_pull(cfg.transport, self.address, cfg.mode, cfg.recv_hwm)
        self._receiver = Receiver(
            self.source_id,
            cfg,
            sock,
            self._halt,
            self._abandon,
            nvtx=self._nvtx,
            service=self.service,
        )

    def expected_frames(self) -> int | None:
        return self.scfg.max_frames or None

    def endpoint(self) -> str:
        """The bound or dialled address (with the real port when ':0' was configured)."""
        self.ready()
        return self._receiver.endpoint

    def batches(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        thread = threading.Thread(
            target=self._receiver.run, name=f"{self.source_id}-recv", daemon=True
        )
        thread.start()
        frames, max_frames = 0, self.scfg.max_frames
        try:
            while True:
                item = self._take()
                if isinstance(item, EndOfStream):
                    self._finish(item)
                    return
                t0 = time.perf_counter()
                arrival = item[2:]  # (seconds quiet before it, UTC arrival time)
                try:
                    with nvtx_range("decode", self._nvtx):
                        images, meta = self.decode(item[1])
                except WireError as err:
                    self.bad.record(err)
                    continue
                finally:
                    item = None  # frames read in place keep what they need of the buffer
                    self._decode_s += time.perf_counter() - t0
                if self.decode.zeroed_pixels and not self._zero_logged:
                    self._zero_logged = True
                    log.warning(
                        "%s: NaN/inf pixels set to 0 (non_finite: zero); counted in "
                        "stats().zeroed_pixels",
                        self.source_id,
                    )
                self._number_events(meta, frames, images.shape[0])
                meta[ARRIVAL_T] = np.full(images.shape[0], arrival[1])  # its receipt (UTC s)
                frames += images.shape[0]
                for part, part_meta in self._daq_runs(images, meta, arrival):
                    yield from split_message(part, part_meta, self.scfg.frames_per_message)
                if max_frames and frames >= max_frames and not self._halt.is_set():
                    self.reason = f"max frames ({frames} >= {max_frames})"
                    self._halt.set()  # what was already received is still ingested
        finally:
            self._halt.set()
            self._abandon.set()
            thread.join(timeout=10 * POLL_S + 5)
            self._discard_inbox()

    def _daq_runs(
        self, images: np.ndarray, meta: dict[str, np.ndarray], arrival: tuple[float, float]
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """A message's events cut at DAQ run boundaries, each part labelled `daq_run`
        (service only; outside a service the message passes unchanged, with no label)."""
        run_field = meta.pop(DAQ_RUN_FIELD, None)
        if not self.service:
            yield images, meta
            return
        quiet_s, wall_t = arrival
        gap_s = self.scfg.daq_run.gap_s
        previous = self._daq_run.label
        self._daq_run, cuts = label_message(
            self._daq_run, images.shape[0], run_field, quiet_s, wall_t, gap_s
        )
        for label, start, stop in cuts:
            if label != previous:
                log.info("%s: DAQ run %s begins", self.source_id, label)
                previous = label
            part = {key: value[start:stop] for key, value in meta.items()}
            part["daq_run"] = label_array(label, stop - start)
            yield images[start:stop], part

    def _number_events(self, meta: dict[str, np.ndarray], first: int, count: int) -> None:
        """Give events without an `event_id` field their position in this actor's stream.

        LCLStreamer sends event ids only when configured to (an `extra` field named event_id);
        without one, the rows of a socket run would have no id at all. Numbered here, ids are
        unique per actor, and (/peaknet/source_id, /LCLS/event_id) is unique in the files.
        """
        if "event_id" in meta:
            return
        if not self._numbering_logged:
            self._numbering_logged = True
            log.info(
                "%s: messages carry no event_id; numbering events 0, 1, ... in arrival order",
                self.source_id,
            )
        meta["event_id"] = np.arange(first, first + count, dtype=np.int64)

    def _take(self) -> Any:
        """Next inbox item. Once stop() was called the receiver stops reading, and the inbox
        drains up to its end-of-stream token."""
        while True:
            if self.stopping.is_set():
                self._halt.set()
            t0 = time.perf_counter()
            try:
                with nvtx_range("receive_wait", self._nvtx):
                    return self._receiver.inbox.get(timeout=POLL_S)
            except queue.Empty:
                continue
            finally:
                self.waited(time.perf_counter() - t0)

    def _finish(self, end: EndOfStream) -> None:
        if end.error is not None:
            raise RuntimeError(f"{self.source_id}: {end.error}") from end.error
        if end.reason == HALTED:
            return  # stopped, or max_frames: the reason is already known
        self.reason = end.reason
        log.info(
            "%s: %s; ending the stream after %d messages",
            self.source_id,
            end.reason,
            self._receiver.messages,
        )

    def _discard_inbox(self) -> None:
        while True:
            try:
                item = self._receiver.inbox.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, EndOfStream):
                self._discarded += 1
        self._discarded += self._receiver.discarded
        if self._discarded:
            log.warning(
                "%s: %d received messages not ingested (stream ended: %s)",
                self.source_id,
                self._discarded,
                self.end_reason(),
            )

    def stats(self) -> SocketStats:
        receiver = self._receiver
        return SocketStats(
            **self._stats_fields(),
            transport=self.scfg.transport,
            address=self.address,
            endpoint=receiver.endpoint if receiver else None,
            messages=receiver.messages if receiver else 0,
            message_bytes=receiver.bytes if receiver else 0,
            bad_messages=dict(self.bad.counts),
            bad_total=self.bad.total,
            discarded_at_stop=self._discarded,
            zeroed_pixels=self.decode.zeroed_pixels,
            decode_s=self._decode_s,
        )
