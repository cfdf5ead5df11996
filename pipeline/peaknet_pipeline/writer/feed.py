"""The live CrystFEL feed (writer.live_feed): one ZeroMQ endpoint per run that hands each
indexamajig request the newest hit, and the writers' side that offers it their hits.

Design. One small Ray actor (`LiveFeedActor`, started by the driver, named after the run)
owns the socket, so indexamajig gets one address however many writers there are. Writers
do not push every hit to it: each asks the feed every POLL_S whether anyone is reading
(a request is waiting or came in the last DEMAND_S), and only then hands a hit's frame and
peaks to it (packed there: live_feed.frame_map) with a fire-and-forget actor call, at most
`buffer` calls in flight per writer. When no indexamajig is connected a hit costs the writer
a counter increment and a clock read: no copy, no message, no Ray call. While someone
reads, an offered hit costs the writer one copy of its frame (Ray's argument); the feed
actor packs it. The feed never holds
the pipeline back: a writer never waits on it (the demand answer is read only once it has
arrived), and the feed keeps at most `buffer` frames, the oldest pushed out when more come.
Every hit is either served or skipped: pushed out of the buffer, left in it at the end, or
never offered (nobody asked, the writer had `buffer` offers in flight, or the run wrote no
frames); writers report those last with their next demand poll and when they close.

Socket. A ROUTER, not a REP: indexamajig's workers each send one request and wait for a
frame (src/im-zmq.c), so the feed must hold several requests at once until hits arrive and
answer them in any order; a REP can hold one request and must answer it before it may
receive the next, so one waiting worker would block every other. With ROUTER_MANDATORY a
frame addressed to a worker that disconnected mid-request fails to send and goes back to
the buffer for the next request instead of being lost; nothing waits on that worker.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config.models import LiveFeedConfig, WriterConfig
from ..placement import actor_class
from .cxi import photon_energy_ev
from .live_feed import GEOMETRY_FILE, NewestBuffer, feed_geometry, frame_map, pack

log = logging.getLogger("peaknet_pipeline.writer.feed")

POLL_S = 0.5  # how often a writer asks whether anyone reads the feed
DEMAND_S = 10.0  # a request this recent still counts as someone reading
SERVE_POLL_MS = 50  # the feed's socket loop wakes at least this often to serve parked requests


def actor_name(run: str) -> str:
    """The feed actor's name: writers find it by the run id."""
    return f"{run}-live-feed"


class FeedServer:
    """The ROUTER endpoint and its buffer; one thread owns the socket. Answers any request
    string (indexamajig sends its --zmq-request; `next` by convention) with one frame."""

    def __init__(self, bind: str, buffer: int, clock: Callable[[], float] = time.monotonic):
        import zmq

        self.buffer = NewestBuffer(buffer)
        self.clock = clock
        self.served = 0
        self.requests = 0
        self.unoffered = 0  # hits the writers never offered (added to skipped)
        self._last_request = -float("inf")
        self._parked: deque[bytes] = deque()  # identities of the requests waiting for a frame
        self._lock = threading.Lock()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(bind)
        self.address = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-feed", daemon=True)
        self._thread.start()

    def offer(self, frame: bytes) -> None:
        """Keep a packed frame for the next request (never blocks)."""
        self.buffer.offer(frame)

    def wanted(self) -> bool:
        """Whether anyone reads: a request waits, or one came within DEMAND_S."""
        with self._lock:
            return bool(self._parked) or self.clock() - self._last_request < DEMAND_S

    def not_offered(self, n: int) -> None:
        with self._lock:
            self.unoffered += int(n)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "address": self.address,
                "served": self.served,
                "skipped": self.buffer.skipped + self.unoffered,
                "dropped_from_buffer": self.buffer.skipped,
                "not_offered": self.unoffered,
                "requests": self.requests,
                "waiting_requests": len(self._parked),
                "buffered": len(self.buffer),
            }

    def close(self) -> dict[str, Any]:
        """Stop serving; frames still buffered count as skipped. Returns the final stats."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=5.0)
            self._sock.close(linger=0)
            self._ctx.term()
            self.buffer.drain()
        return self.stats()

    def _loop(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(SERVE_POLL_MS):
                self._receive()
            self._serve()

    def _receive(self) -> None:
        import zmq

        while True:
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) < 2:  # not a REQ envelope: nothing to answer
                continue
            with self._lock:
                self.requests += 1
                self._last_request = self.clock()
                self._parked.append(parts[0])

    def _serve(self) -> None:
        import zmq

        while True:
            with self._lock:
                if not self._parked:
                    return
                frame = self.buffer.take()
                if frame is None:
                    return
                ident = self._parked.popleft()
            try:
                self._sock.send_multipart([ident, b"", frame], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                if exc.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                    raise
                self.buffer.offer(frame)  # the worker left (or is full): the next one gets it
                continue
            with self._lock:
                self.served += 1


class LiveFeedActor:
    """The Ray actor around FeedServer (threaded, so writers' offers and polls, the driver's
    stats and stop answer at once), with its two metrics counters."""

    def __init__(self, feed: LiveFeedConfig, run: str, metrics: bool) -> None:
        self.server = FeedServer(feed.bind, feed.buffer)
        self.recorder = None
        if metrics:
            from ..monitor.metrics import Recorder, live_feed_readings

            labels = {"run": run, "stage": "live_feed", "actor": actor_name(run)}
            self.recorder = Recorder(labels, lambda: live_feed_readings(self.server.stats()))
            self.recorder.start()
        log.info("live feed for CrystFEL at %s", self.server.address)

    def address(self) -> str:
        return self.server.address

    def offer(self, *frame: Any) -> None:
        """A hit as frame_map's arguments, packed here: the writer only hands over its arrays
        (Ray moves the frame with one copy; packing it would cost the writer two more)."""
        self.server.offer(pack(frame_map(*frame)))

    def poll(self, not_offered: int) -> bool:
        self.server.not_offered(not_offered)
        return self.server.wanted()

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def stop(self) -> dict[str, Any]:
        final = self.server.close()
        if self.recorder is not None:
            self.recorder.close()
        return final


def start_live_feed(cfg: Any, run: str) -> Any | None:
    """Start the run's feed actor (None when writer.live_feed is off); raises if it cannot
    bind. It runs on the driver's node (on Kubernetes the head pod, whose port
    kubectl port-forward reaches), with no CPU reserved: one light thread."""
    feed = cfg.writer.live_feed
    if not feed.enabled:
        return None
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = actor_class(LiveFeedActor).options(
        name=actor_name(run), num_cpus=0, max_concurrency=8, scheduling_strategy=here
    )
    handle = actor.remote(feed, run, cfg.monitor.metrics)
    try:
        ray.get(handle.address.remote(), timeout=60)  # bound, or the start fails here
    except Exception as exc:
        ray.kill(handle)
        from ..errors import StartupError, describe

        raise StartupError(f"writer.live_feed.bind {feed.bind}: {describe(exc)}") from None
    return handle


def stop_live_feed(handle: Any | None) -> dict[str, Any] | None:
    """The feed's final counts (report.json's live_feed); the actor is ended."""
    if handle is None:
        return None
    import ray

    try:
        return ray.get(handle.stop.remote(), timeout=30)
    except Exception as exc:  # noqa: BLE001 - the feed is a view: never the run's failure
        log.warning("live feed: no final counts: %s", exc)
        return {"error": str(exc)}
    finally:
        ray.kill(handle)


class FeedOffers:
    """A writer's side of the feed (WriterStage.feed): called with every Result's peaks
    after its rows are written; never raises, never waits."""

    def __init__(self, cfg: WriterConfig, output_dir: str, run: str) -> None:
        self.cfg = cfg
        self.output_dir = output_dir
        self.name = actor_name(run)
        self.clen_mm = cfg.geometry.camera_length_m * 1e3
        self._actor: Any = None
        self._looked_up = -float("inf")
        self._poll: Any = None  # the demand answer on its way
        self._polled = -float("inf")
        self._wanted = False
        self._unoffered = 0  # not yet reported to the feed
        self._in_flight: list[Any] = []
        self._geometry_written = False
        self._failed = False

    def __call__(self, result: Any, peaks: list, hit: np.ndarray, images: Any) -> None:
        try:
            self._offer(result, peaks, hit, images)
        except Exception as exc:  # noqa: BLE001 - a live view must not fail the writer
            self._unoffered += int(np.count_nonzero(hit))
            if not self._failed:
                self._failed = True
                log.warning("live feed: hits not offered: %s", exc)

    def _offer(self, result: Any, peaks: list, hit: np.ndarray, images: Any) -> None:
        if not self._geometry_written:
            self._write_geometry(tuple(result.batch.shape[1:]))
        idx = np.flatnonzero(hit)
        if not idx.size:
            return
        if images is None or not self._demand():
            self._unoffered += int(idx.size)
            return
        import ray

        if self._in_flight:
            _, self._in_flight = ray.wait(
                self._in_flight, num_returns=len(self._in_flight), timeout=0
            )
        energy = photon_energy_ev(result.batch.meta)
        for i in idx[-self.cfg.live_feed.buffer :]:  # older ones would only be pushed out
            if len(self._in_flight) >= self.cfg.live_feed.buffer:
                self._unoffered += 1
                continue
            p = peaks[i]
            ident = {
                "source_id": result.batch.source_id,
                "batch_seq": int(result.batch.seq),
                "batch_index": int(i),
            }
            e = float("nan") if energy is None else float(energy[i])
            frame = (images[i], p.col, p.row, p.total, e, self.clen_mm, ident)
            self._in_flight.append(self._actor.offer.remote(*frame))
        self._unoffered += max(0, int(idx.size) - self.cfg.live_feed.buffer)

    def _demand(self) -> bool:
        """Whether anyone reads the feed, as last heard (asks again every POLL_S, reporting
        the hits not offered since; never waits for the answer)."""
        import ray

        now = time.monotonic()
        if self._actor is None:
            if now - self._looked_up < POLL_S * 10:
                return False
            self._looked_up = now
            try:
                self._actor = ray.get_actor(self.name)
            except ValueError:
                return False
        if self._poll is not None and ray.wait([self._poll], timeout=0)[0]:
            self._wanted, self._poll = bool(ray.get(self._poll)), None
        if self._poll is None and now - self._polled >= POLL_S:
            self._poll, self._unoffered = self._actor.poll.remote(self._unoffered), 0
            self._polled = now
        return self._wanted

    def _write_geometry(self, frame_shape: tuple) -> None:
        self._geometry_written = True
        path = os.path.join(self.output_dir, GEOMETRY_FILE)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(feed_geometry(self.cfg.geometry, frame_shape))
        os.replace(tmp, path)

    def close(self) -> None:
        """Report the hits not offered, after this writer's offers have arrived (the counts
        then add up: served + skipped = hits)."""
        if self._actor is None:
            return
        import ray

        try:
            if self._in_flight:
                ray.wait(self._in_flight, num_returns=len(self._in_flight), timeout=10)
            if self._poll is not None:
                ray.get(self._poll, timeout=10)
            ray.get(self._actor.poll.remote(self._unoffered), timeout=10)
            self._unoffered, self._in_flight = 0, []
        except Exception as exc:  # noqa: BLE001 - the feed may have gone first
            log.warning("live feed: last counts not reported: %s", exc)


def live_offers(cfg: WriterConfig, output_dir: str, run: str) -> FeedOffers | None:
    """A writer's FeedOffers, or None when the feed is off."""
    return FeedOffers(cfg, output_dir, run) if cfg.live_feed.enabled else None
