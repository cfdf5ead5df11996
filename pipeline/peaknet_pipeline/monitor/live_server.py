"""The live page's server (monitor.live_page): a read-only HTTP server in a daemon thread of
the driver, from the moment the pipeline is built until the run's report is written.

Endpoints (all GET or HEAD; any other method is answered 405; JSON unless said):
  /              the page (monitor/live_html.py: inline HTML, CSS and JS, no network)
  /api/summary   run id, state, elapsed, DAQ run, frames, hit rate, verdict, latency, newest
                 frame's age
  /api/series    the last minutes per sampling interval: t, frames/s in and written, hit
                 rate, queue fill
  /api/peaks     peaks-per-frame histogram and peakogram (peaks by radius and log intensity)
  /api/powder    the virtual powder pattern's counts (downsampled lab grid); /powder.png its
                 picture (log scale; cmap=inferno|grey, v= ignored: the page's cache buster)
  /api/health    queues, verdict with its evidence, inference busy (+GPU util), pool,
                 restarts, frames lost
  /api/hits      newest hits, newest first, each with its image's address
  /hits/<id>.png a hit frame: ?lo=&hi= percentiles of the intensity range (default 1, 99.5),
                 cmap=inferno|grey, max= long side in pixels (16 .. 4096, default 1024)
  /api/events    server-sent events: the summary once a second
Unknown paths 404, a bad query 400, an error inside 500 with one line: never a traceback.

Cost: documents are made from what the driver holds (its samples, the pool, the restarts).
The writers' live views are fetched by one refresher thread, at most once per REFRESH_S and
only while someone watches (a request within WATCH_S, or an open event stream); with nobody
watching the server makes no Ray call at all. Images are encoded per request.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .live_data import LiveState, query_png
from .live_html import PAGE
from .liveview import live_page_on

log = logging.getLogger("peaknet_pipeline.live_page")

REFRESH_S = 1.0  # the writers' views, at most this often
WATCH_S = 3.0  # a request this recent: someone watches
EVENT_S = 1.0  # the event stream's period
MAX_STREAMS = 32  # event streams open at once; more are told to poll (503)
REQUEST_TIMEOUT_S = 10.0  # a client that sends nothing for this long is dropped

JSON_ROUTES = {
    "/api/summary": "summary",
    "/api/series": "series_doc",
    "/api/peaks": "peaks_doc",
    "/api/powder": "powder_doc",
    "/api/health": "health_doc",
    "/api/hits": "hits_doc",
}


class Handler(BaseHTTPRequestHandler):
    """One request; `server` is a LiveServer. Only GET and HEAD exist."""

    server: LiveServer
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    server_version = "peaknet-live"
    sys_version = ""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # any other method, known or made up: 405
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._send(405, b"read-only: GET and HEAD only\n", "text/plain", {"Allow": "GET, HEAD"})

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("live page: %s %s", self.address_string(), fmt % args)

    def _route(self, body: bool) -> None:
        self.server.touch()
        try:
            url = urlsplit(self.path)
            params = parse_qs(url.query, keep_blank_values=True, strict_parsing=bool(url.query))
        except ValueError:
            return self._send(400, b"bad query\n", "text/plain", body=body)
        path, state = url.path, self.server.state
        try:
            if path in ("/", "/index.html"):
                return self._send(200, PAGE, "text/html; charset=utf-8", body=body)
            if path in JSON_ROUTES:
                if params:
                    return self._send(
                        400, b"this endpoint takes no query\n", "text/plain", body=body
                    )
                doc = getattr(state, JSON_ROUTES[path])()
                return self._send(200, json.dumps(doc).encode(), "application/json", body=body)
            if path == "/powder.png":
                params.pop("v", None)  # a version (the page's peak count): a new URL, fetched anew
                cmap = params.pop("cmap", ["inferno"])
                if params or len(cmap) != 1 or cmap[0] not in ("inferno", "grey"):
                    return self._send(
                        400, b"powder.png takes cmap=inferno|grey\n", "text/plain", body=body
                    )
                return self._png(state.powder_png(cmap[0]), body)
            if path.startswith("/hits/") and path.endswith(".png"):
                number = path[len("/hits/") : -len(".png")]
                if not number.isdigit() or len(number) > 12:
                    return self._send(404, b"no such hit\n", "text/plain", body=body)
                try:
                    lo, hi, cmap, side = query_png(params)
                except ValueError as exc:
                    return self._send(400, f"{exc}\n".encode(), "text/plain", body=body)
                return self._png(state.hit_png(int(number), lo, hi, cmap, side), body)
            if path == "/api/events":
                return self._events(body)
        except (BrokenPipeError, ConnectionResetError):
            return None
        except Exception as exc:  # noqa: BLE001 - one line to the client, the rest to the log
            log.warning("live page: %s failed: %s", path, exc, exc_info=log.isEnabledFor(10))
            return self._send(500, b"internal error\n", "text/plain", body=body)
        return self._send(404, b"not found\n", "text/plain", body=body)

    def _png(self, data: bytes | None, body: bool) -> None:
        if data is None:
            return self._send(404, b"not held (any more)\n", "text/plain", body=body)
        return self._send(200, data, "image/png", body=body)

    def _send(
        self,
        code: int,
        data: bytes,
        kind: str,
        headers: dict[str, str] | None = None,
        body: bool = True,
    ) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _events(self, body: bool) -> None:
        """The summary once every EVENT_S until the client leaves or the server closes."""
        if not self.server.stream_opened():
            return self._send(503, b"too many event streams: poll /api/summary\n", "text/plain")
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            while body and not self.server.closing.is_set():
                self.server.touch()
                doc = json.dumps(self.server.state.summary())
                self.wfile.write(f"data: {doc}\n\n".encode())
                self.wfile.flush()
                self.server.closing.wait(EVENT_S)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass
        finally:
            self.server.stream_closed()


class LiveServer(ThreadingHTTPServer):
    """The HTTP server, its request threads (daemons) and the refresher thread that fetches
    the writers' views while someone watches."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        state: LiveState,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state, self.clock = state, clock
        self.closing = threading.Event()
        self._last_request = -float("inf")
        self._streams = 0
        self._lock = threading.Lock()
        self.refreshes = 0
        self._started = False
        self.watched_ever = False
        super().__init__(address, Handler)
        self._workers = [
            threading.Thread(
                target=self.serve_forever, args=(0.25,), name="live-page", daemon=True
            ),
            threading.Thread(target=self._refresher, name="live-page-views", daemon=True),
        ]

    @property
    def url_port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> LiveServer:
        for t in self._workers:
            t.start()
        self._started = True
        return self

    def touch(self) -> None:
        with self._lock:
            self._last_request = self.clock()
            self.watched_ever = True

    def watched(self) -> bool:
        with self._lock:
            return self._streams > 0 or self.clock() - self._last_request < WATCH_S

    def stream_opened(self) -> bool:
        with self._lock:
            if self._streams >= MAX_STREAMS:
                return False
            self._streams += 1
            return True

    def stream_closed(self) -> None:
        with self._lock:
            self._streams -= 1

    def _refresher(self) -> None:
        while not self.closing.wait(REFRESH_S):
            if not self.watched():
                continue
            try:
                self.state.refresh()
                self.refreshes += 1
            except Exception as exc:  # noqa: BLE001 - the page is a view, never the run's failure
                log.debug("live page: writer views not fetched: %s", exc)

    def close(self) -> None:
        """Stop serving (open event streams end within EVENT_S; request threads are daemons)."""
        if self.closing.is_set():
            return
        self.closing.set()
        if self._started:  # shutdown() waits for serve_forever, which must be running
            self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("live page: connection from %s ended badly", client_address, exc_info=True)


def page_url(bind: str, port: int) -> str:
    """The address to print: the bound one, or this host's name when bound to every address."""
    host = socket.gethostname() if bind in ("0.0.0.0", "::", "") else bind
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def writer_views(pipeline: Any) -> Callable[[dict[str, int]], dict[str, Any]]:
    """The refresher's call: every writer's `live_view(since)` (running, or finished and not
    yet ended), waited for at most 2 s (a busy writer's view comes next time)."""

    def fetch(known: dict[str, int]) -> dict[str, Any]:
        import ray

        from ..placement import Role

        # Running writers, and those done but not yet ended (the driver's last fetch).
        running = [a for a in pipeline.of(Role.WRITER) if a.error is None and a.run_ref is not None]
        refs = {a.actor_id: a.handle.live_view.remote(known.get(a.actor_id, 0)) for a in running}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=2.0)
        out = {}
        for actor, ref in refs.items():
            if ref in ready:
                try:
                    out[actor] = ray.get(ref)
                except ray.exceptions.RayError:
                    pass  # the writer just ended or died: the driver's loop sees it
        return out

    return fetch


def start_live_page(cfg: Any, run_id: str, pipeline: Any) -> LiveServer | None:
    """Serve the page (None when monitor.live_page is off, or its address cannot be bound:
    the page is a view, never the run's failure; a port in use, say by a second demo at once,
    gives way to a free one); prints its address."""
    if not live_page_on(cfg):
        return None
    page = cfg.monitor.live_page
    state = LiveState(run_id, cfg.writer.min_peaks, writer_views(pipeline), pipeline)
    try:
        server = LiveServer((page.bind, page.port), state).start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or page.port == 0:
            log.warning("live page not served: %s:%s: %s", page.bind, page.port, exc.strerror)
            return None
        log.info("live page: port %s is taken (another run?): serving on a free one", page.port)
        return start_live_page(cfg.model_copy(update={"monitor": _any_port(cfg)}), run_id, pipeline)
    print(f"live page: {page_url(page.bind, server.url_port)}", flush=True)
    return server


def _any_port(cfg: Any) -> Any:
    page = cfg.monitor.live_page.model_copy(update={"port": 0})
    return cfg.monitor.model_copy(update={"live_page": page})


def attach_series(server: LiveServer | None, series: Any) -> None:
    """Give the page the run's time series once the driver has made it."""
    if server is not None:
        server.state.series = series


def final_views(server: LiveServer | None) -> None:
    """Once streaming has ended and before the actors end: the writers' last figures, so the
    page ends on the run's totals; only if anyone ever watched (else no call at all)."""
    if server is not None and server.watched_ever:
        try:
            server.state.refresh()
        except Exception as exc:  # noqa: BLE001 - a view: never the run's failure
            log.debug("live page: last writer views not fetched: %s", exc)


def stop_live_page(server: LiveServer | None) -> None:
    if server is not None:
        server.close()
