"""The two ends of an LCLStreamer stream over zmq (PUSH/PULL) or nng (Push0/Pull0).

The receiving end hands out each message's buffer in place (a zmq frame, an nng message body)
together with the object that owns it, so decoding reads it without a copy. The sending end
behaves like LCLStreamer while streaming (small send high-water mark, LINGER 0) but can wait
for queued messages at close (see push.py). Every blocking call returns after POLL_S at most,
so callers can check their stop flag.
"""

from __future__ import annotations

import ctypes
import re
import threading
import time
from typing import Any

POLL_S = 0.1  # longest a blocking receive or send runs before the caller checks for stop


# -- receiving --------------------------------------------------------------------------------
class PullSocket:
    """A receiving socket: `recv()` returns (owner, buffer) or None after about POLL_S.
    The owner keeps the transport's message alive while the buffer is read (no copy)."""

    endpoint: str

    def recv(self) -> tuple[Any, memoryview] | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ZmqPull(PullSocket):
    def __init__(self, address: str, mode: str, recv_hwm: int) -> None:
        import zmq

        self._again = zmq.Again
        self._ctx = zmq.Context(io_threads=1)
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.RCVHWM, recv_hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVTIMEO, int(POLL_S * 1000))
        try:
            if mode == "bind":
                self._sock.bind(re.sub(r":0$", ":*", address))
                self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                self._sock.connect(address)
                self.endpoint = address
        except zmq.ZMQError:
            self.close()
            raise

    def recv(self) -> tuple[Any, memoryview] | None:
        try:
            frame = self._sock.recv(copy=False)
        except self._again:
            return None
        return frame, frame.buffer

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()


class NngPull(PullSocket):
    def __init__(self, address: str, mode: str, recv_hwm: int) -> None:
        import pynng

        self._timeout = pynng.Timeout
        # recv_max_size 0: no limit in nng, which would otherwise drop the connection on a
        # large message without telling us; the decoder rejects oversized messages, counted.
        self._sock = pynng.Pull0(
            recv_buffer_size=min(recv_hwm, 8192), recv_max_size=0, recv_timeout=int(POLL_S * 1000)
        )
        try:
            if mode == "bind":
                self._sock.listen(address)
                port = str(self._sock.listeners[-1].local_address).rsplit(":", 1)[-1]
                self.endpoint = re.sub(r":\d+$", f":{port}", address)
            else:
                self._sock.dial(address, block=False)  # nng keeps redialling until the peer is up
                self.endpoint = address
        except pynng.NNGException:
            self._sock.close()
            raise

    def recv(self) -> tuple[Any, memoryview] | None:
        from pynng import ffi, lib

        try:
            msg = self._sock.recv_msg()
        except self._timeout:
            return None
        # The body in place. nng frees it when `msg` goes, so the view must keep `msg` alive
        # (decoded frames may be views of it): a ctypes array over the body can hold it.
        size = lib.nng_msg_len(msg._nng_msg)
        address = int(ffi.cast("uintptr_t", lib.nng_msg_body(msg._nng_msg)))
        body = (ctypes.c_ubyte * size).from_address(address)
        body.owner = msg
        return msg, memoryview(body)

    def close(self) -> None:
        self._sock.close()


def open_pull(transport: str, address: str, mode: str, recv_hwm: int) -> PullSocket:
    """A bound or connected receiving socket; ':0' binds an ephemeral port (see .endpoint)."""
    return _opened(ZmqPull if transport == "zmq" else NngPull, transport, address, mode, recv_hwm)


def _opened(cls: type, transport: str, address: str, mode: str, hwm: int) -> Any:
    """`cls(address, mode, hwm)`; a failure is an OSError naming the transport, mode and
    address (what a user must change), without zmq's repeat of the address."""
    try:
        return cls(address, mode, hwm)
    except Exception as exc:
        reason = re.sub(r" \(addr=.*\)$", "", str(exc))  # zmq repeats the address
        raise OSError(f"{transport} {mode} {address!r} failed: {reason}") from exc


# -- sending -----------------------------------------------------------------------------------
class ZmqPeers:
    """The connections of a zmq socket, from its monitor events (a thread reads them).

    zmq has no call that says whether a peer is connected; the socket monitor reports each
    connection (CONNECTED when we dialled, ACCEPTED when we bound) and its end, keyed by file
    descriptor. The monitor lives until the socket is destroyed, i.e. after its linger, so
    `stopped` also marks the end of the linger (see ZmqPush.close)."""

    def __init__(self, sock: Any) -> None:
        import zmq

        self._zmq = zmq
        mask = (
            zmq.EVENT_CONNECTED
            | zmq.EVENT_ACCEPTED
            | zmq.EVENT_DISCONNECTED
            | zmq.EVENT_MONITOR_STOPPED
        )
        self._monitor = sock.get_monitor_socket(mask)
        self._fds: set[int] = set()
        self.ever_connected = False
        self.stopped = threading.Event()
        threading.Thread(target=self._watch, name="zmq-monitor", daemon=True).start()

    @property
    def count(self) -> int:
        return len(self._fds)

    def _watch(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        zmq = self._zmq
        try:
            while True:
                event = recv_monitor_message(self._monitor)
                kind, fd = event["event"], event["value"]
                if kind in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED):
                    self._fds.add(fd)
                    self.ever_connected = True
                elif kind == zmq.EVENT_DISCONNECTED:
                    self._fds.discard(fd)
                elif kind == zmq.EVENT_MONITOR_STOPPED:
                    break
        except zmq.ZMQError:
            pass  # the context was terminated: nothing more to watch
        finally:
            self._fds.clear()
            self._monitor.close(linger=0)
            self.stopped.set()


class ZmqPush:
    """PUSH socket as LCLStreamer sets it up: small send high-water mark, LINGER 0."""

    def __init__(self, address: str, mode: str, send_hwm: int) -> None:
        import zmq

        self._zmq = zmq
        self._ctx = zmq.Context(io_threads=1)
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, send_hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDTIMEO, int(POLL_S * 1000))
        self._peers = ZmqPeers(self._sock)  # before bind/connect: no event is missed
        self._delivered: bool | None = None  # set by close()
        try:
            if mode == "bind":
                self._sock.bind(address[:-2] + ":*" if address.endswith(":0") else address)
                self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                self._sock.connect(address)
                self.endpoint = address
        except zmq.ZMQError:
            self._sock.close(linger=0)
            self._ctx.term()
            raise

    @property
    def peers(self) -> int:
        """Receivers connected now."""
        return self._peers.count

    @property
    def ever_connected(self) -> bool:
        return self._peers.ever_connected

    def send(self, buf: bytes, stop: threading.Event) -> bool:
        """Block until queued (the consumer's back-pressure shows here); False if stopped."""
        while not stop.is_set():
            try:
                self._sock.send(buf, copy=len(buf) < 65536)
                return True
            except self._zmq.Again:
                continue
        return False

    def close(self, linger_s: float) -> bool:
        """Wait up to linger_s for queued messages to leave; True if none was discarded.
        The socket is destroyed once its queue is empty or the linger ran out, and that ends
        its monitor; the context's term then returns at once. Closing again repeats the
        answer."""
        if self._delivered is None:
            self._sock.setsockopt(self._zmq.LINGER, int(linger_s * 1000))
            t0 = time.monotonic()
            self._sock.close()
            self._peers.stopped.wait(linger_s + 5.0)  # if it never comes, term ends it
            self._ctx.term()
            self._delivered = time.monotonic() - t0 < linger_s * 0.99
        return self._delivered


class _NngSocket:
    """One pynng Push0 with what its pipe callbacks saw: the pipes open now, and the messages
    written by pipes that have closed since (nng drops a closed pipe's statistics)."""

    def __init__(self, send_hwm: int, lock: threading.Lock, on_connect: Any) -> None:
        import pynng

        self.sock = pynng.Push0(send_buffer_size=send_hwm, send_timeout=int(POLL_S * 1000))
        self.pipes: set[int] = set()
        self.gone_tx = 0
        self.receiver_left = False
        self._lock = lock
        self._on_connect = on_connect
        self.sock.add_post_pipe_connect_cb(self._added)
        self.sock.add_post_pipe_remove_cb(self._removed)

    def _added(self, pipe: Any) -> None:
        with self._lock:
            self.pipes.add(pipe.id)
        self._on_connect()

    def _removed(self, pipe: Any) -> None:
        # Called after the pipe left the socket, while its statistics still exist.
        with self._lock:
            self.receiver_left = True  # before the pipe count drops: whoever sees no peers
            self.gone_tx += nng_pipe_tx(self.sock).get(pipe.id, 0)  # sees the flag too
            self.pipes.discard(pipe.id)

    def written(self) -> int:
        """Messages its pipes finished writing, closed pipes included (caller holds the lock)."""
        return self.gone_tx + sum(nng_pipe_tx(self.sock).values())


class NngPush:
    """Push0 socket (older LCLStreamer releases). Pipe callbacks keep track of the receivers
    and of what each pipe wrote.

    Once a receiver has gone, the next send goes through a new socket: nng 1.11's Push0 can
    put a closing pipe back on its list of ready pipes (when a send completes as the pipe
    closes), and a later send on that socket then uses the freed pipe (SIGSEGV, seen in about
    one run in five when a receiver left mid-stream). Messages still queued in the old socket
    are lost with it, and counted as not delivered."""

    def __init__(self, address: str, mode: str, send_hwm: int) -> None:
        import pynng

        self._timeout = pynng.Timeout
        self._mode, self._hwm = mode, send_hwm
        self.sent = 0
        self.ever_connected = False
        self._retired_tx = 0  # written by the sockets replaced so far
        self._done: bool | None = None  # set by close()
        self._lock = threading.Lock()
        self._nng = self._open(address)
        if mode == "bind":
            port = str(self._nng.sock.listeners[-1].local_address).rsplit(":", 1)[-1]
            self.endpoint = address.rsplit(":", 1)[0] + f":{port}"
        else:
            self.endpoint = address

    def _open(self, address: str) -> _NngSocket:
        import pynng

        nng = _NngSocket(self._hwm, self._lock, self._connected)
        try:
            if self._mode == "bind":
                nng.sock.listen(address)
            else:
                nng.sock.dial(address, block=False)  # nng redials until the peer is up
        except pynng.NNGException:
            nng.sock.close()
            raise
        return nng

    def _connected(self) -> None:
        self.ever_connected = True

    def _replace_socket(self) -> None:
        old = self._nng
        old.sock.close()  # its remaining pipes are removed: their counts move to gone_tx
        with self._lock:
            self._retired_tx += old.written()
        self._nng = self._open(self.endpoint)

    @property
    def peers(self) -> int:
        """Receivers connected now."""
        with self._lock:
            return len(self._nng.pipes)

    def delivered(self) -> int:
        """Messages the pipes finished writing, including pipes closed since."""
        with self._lock:
            return self._retired_tx + self._nng.written()

    def send(self, buf: bytes, stop: threading.Event) -> bool:
        if self._nng.receiver_left:
            self._replace_socket()
        while not stop.is_set():
            try:
                self._nng.sock.send(buf)
                self.sent += 1
                return True
            except self._timeout:
                continue
        return False

    def close(self, linger_s: float) -> bool:
        """nng has no linger: wait until the pipes report every message written. Closing
        again repeats the answer."""
        if self._done is None:
            deadline = time.monotonic() + linger_s
            done = self.delivered() >= self.sent
            while not done and time.monotonic() < deadline:
                time.sleep(0.01)
                done = self.delivered() >= self.sent
            self._nng.sock.close()
            self._done = done
        return self._done


def open_push(transport: str, address: str, mode: str, send_hwm: int) -> ZmqPush | NngPush:
    """A connected or bound sending socket; ':0' binds an ephemeral port (see .endpoint)."""
    return _opened(ZmqPush if transport == "zmq" else NngPush, transport, address, mode, send_hwm)


def nng_tx_messages(sock: Any) -> int:
    """Messages the open pipes of `sock` finished writing (nng statistics; no pynng API)."""
    return sum(nng_pipe_tx(sock).values())


def nng_pipe_tx(sock: Any) -> dict[int, int]:
    """{pipe id: messages written} for the open pipes of `sock`, from nng's statistics."""
    from pynng import ffi, lib

    ours = lib.nng_socket_id(sock.socket)
    root = ffi.new("nng_stat **")
    lib.nng_stats_get(root)
    written = {}
    try:
        node = lib.nng_stat_child(root[0])
        while node != ffi.NULL:
            if ffi.string(lib.nng_stat_name(node)) == b"pipe":
                values = {}
                child = lib.nng_stat_child(node)
                while child != ffi.NULL:
                    values[ffi.string(lib.nng_stat_name(child))] = lib.nng_stat_value(child)
                    child = lib.nng_stat_next(child)
                if values.get(b"socket") == ours:
                    written[values[b"id"]] = values.get(b"tx_msgs", 0)
            node = lib.nng_stat_next(node)
    finally:
        lib.nng_stats_free(root[0])
    return written
