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
    cls = ZmqPull if transport == "zmq" else NngPull
    try:
        return cls(address, mode, recv_hwm)
    except Exception as exc:
        reason = re.sub(r" \(addr=.*\)$", "", str(exc))  # zmq repeats the address
        raise OSError(f"{transport} {mode} {address!r} failed: {reason}") from exc


# -- sending -----------------------------------------------------------------------------------
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
        if mode == "bind":
            self._sock.bind(address[:-2] + ":*" if address.endswith(":0") else address)
            self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self._sock.connect(address)
            self.endpoint = address

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
        """Wait up to linger_s for queued messages to leave; True if none was discarded."""
        self._sock.setsockopt(self._zmq.LINGER, int(linger_s * 1000))
        self._sock.close()
        t0 = time.monotonic()
        self._ctx.term()
        return time.monotonic() - t0 < linger_s * 0.99


class NngPush:
    """Push0 socket (older LCLStreamer releases)."""

    def __init__(self, address: str, mode: str, send_hwm: int) -> None:
        import pynng

        self._timeout = pynng.Timeout
        self._sock = pynng.Push0(send_buffer_size=send_hwm, send_timeout=int(POLL_S * 1000))
        self.sent = 0
        if mode == "bind":
            self._sock.listen(address)
            port = str(self._sock.listeners[-1].local_address).rsplit(":", 1)[-1]
            self.endpoint = address.rsplit(":", 1)[0] + f":{port}"
        else:
            self._sock.dial(address, block=False)
            self.endpoint = address

    def send(self, buf: bytes, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                self._sock.send(buf)
                self.sent += 1
                return True
            except self._timeout:
                continue
        return False

    def close(self, linger_s: float) -> bool:
        """nng has no linger: wait until the pipes report every message written."""
        deadline = time.monotonic() + linger_s
        done = nng_tx_messages(self._sock) >= self.sent
        while not done and time.monotonic() < deadline:
            time.sleep(0.01)
            done = nng_tx_messages(self._sock) >= self.sent
        self._sock.close()
        return done


def open_push(transport: str, address: str, mode: str, send_hwm: int) -> ZmqPush | NngPush:
    """A connected or bound sending socket; ':0' binds an ephemeral port (see .endpoint)."""
    cls = ZmqPush if transport == "zmq" else NngPush
    try:
        return cls(address, mode, send_hwm)
    except Exception as exc:
        reason = re.sub(r" \(addr=.*\)$", "", str(exc))  # zmq repeats the address
        raise OSError(f"{transport} {mode} {address!r} failed: {reason}") from exc


def nng_tx_messages(sock: Any) -> int:
    """Messages the pipes of `sock` finished writing (nng statistics; no pynng API for it)."""
    from pynng import ffi, lib

    ours = lib.nng_socket_id(sock.socket)
    root = ffi.new("nng_stat **")
    lib.nng_stats_get(root)
    total = 0
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
                    total += values.get(b"tx_msgs", 0)
            node = lib.nng_stat_next(node)
    finally:
        lib.nng_stats_free(root[0])
    return total
