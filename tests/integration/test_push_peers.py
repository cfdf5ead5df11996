"""The pusher's sockets know when a receiver is connected (zmq socket monitor, nng pipe
callbacks), and nng counts what a pipe wrote even after the receiver closed it."""

from __future__ import annotations

import threading
import time

import pynng
import pytest
import zmq

from peaknet_pipeline.sources.transport import open_push


@pytest.fixture
def open_sender():
    """open_push for a test: every sender it opens is closed after the test, even a failed
    one (a zmq context left to the garbage collector can hang the session in term())."""
    opened = []

    def open_(*args):
        opened.append(open_push(*args))
        return opened[-1]

    yield open_
    for sender in opened:
        sender.close(0.0)  # a no-op for those the test closed


def _until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class _Receiver:
    """A plain zmq PULL or nng Pull0 on loopback, binding or dialling."""

    def __init__(self, transport: str, address: str | None = None) -> None:
        self.transport = transport
        if transport == "zmq":
            self._ctx = zmq.Context()
            self.sock = self._ctx.socket(zmq.PULL)
            self.sock.setsockopt(zmq.RCVTIMEO, 5000)
            if address is None:
                self.sock.bind("tcp://127.0.0.1:*")
                self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                self.sock.connect(address)
        else:
            self.sock = pynng.Pull0(recv_timeout=5000)
            if address is None:
                self.sock.listen("tcp://127.0.0.1:0")
                port = str(self.sock.listeners[0].local_address).rsplit(":", 1)[-1]
                self.address = f"tcp://127.0.0.1:{port}"
            else:
                self.sock.dial(address, block=False)

    def recv(self) -> bytes:
        return self.sock.recv()

    def close(self) -> None:
        if self.transport == "zmq":
            self.sock.close(linger=0)
            self._ctx.term()
        else:
            self.sock.close()


@pytest.mark.parametrize("transport", ["zmq", "nng"])
@pytest.mark.parametrize("mode", ["connect", "bind"])
def test_peers_follow_a_receiver_that_comes_and_goes(transport, mode, open_sender):
    if mode == "connect":
        receiver = _Receiver(transport)
        sender = open_sender(transport, receiver.address, "connect", 5)
    else:
        sender = open_sender(transport, "tcp://127.0.0.1:0", "bind", 5)
        assert sender.peers == 0 and not sender.ever_connected
        receiver = _Receiver(transport, sender.endpoint)
    try:
        assert _until(lambda: sender.peers == 1), "the receiver never showed as connected"
        assert sender.ever_connected
        assert sender.send(b"hello", threading.Event())
        assert receiver.recv() == b"hello"
    finally:
        receiver.close()
    assert _until(lambda: sender.peers == 0), "the receiver's close was not seen"
    assert sender.ever_connected
    assert sender.close(1.0)


@pytest.mark.parametrize("transport", ["zmq", "nng"])
def test_nobody_listening_is_no_peer(transport, open_sender):
    receiver = _Receiver(transport)
    address = receiver.address
    receiver.close()  # the port is free again: connections are refused
    sender = open_sender(transport, address, "connect", 5)
    time.sleep(0.5)  # connection attempts run meanwhile; none may count as a peer
    assert sender.peers == 0 and not sender.ever_connected
    assert sender.send(b"queued", threading.Event())  # fits the send queue
    t0 = time.monotonic()
    assert not sender.close(0.5)  # nobody took it
    assert time.monotonic() - t0 < 5


def test_nng_delivery_counts_messages_of_a_pipe_the_receiver_closed(open_sender):
    # nng forgets a closed pipe's statistics; the pusher used to see 0 of 3 messages written
    # once the receiver had taken all 3 and gone, and waited out its linger.
    receiver = _Receiver("nng")
    sender = open_sender("nng", receiver.address, "connect", 5)
    try:
        assert _until(lambda: sender.peers == 1)
        for i in range(3):
            assert sender.send(b"m%d" % i, threading.Event())
        assert [receiver.recv() for _ in range(3)] == [b"m0", b"m1", b"m2"]
    finally:
        receiver.close()
    assert _until(lambda: sender.peers == 0)
    assert sender.delivered() == 3
    t0 = time.monotonic()
    assert sender.close(5.0)
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("mode", ["connect", "bind"])
def test_nng_sender_reaches_a_receiver_that_comes_back(mode, open_sender):
    # After a receiver leaves, the nng sender replaces its socket (see NngPush); a receiver
    # at the same address must still get what is sent next, and the counts must add up.
    stop = threading.Event()
    if mode == "connect":
        first = _Receiver("nng")
        sender = open_sender("nng", first.address, "connect", 5)
    else:
        sender = open_sender("nng", "tcp://127.0.0.1:0", "bind", 5)
        first = _Receiver("nng", sender.endpoint)
    try:
        assert sender.send(b"one", stop)
        assert first.recv() == b"one"
    finally:
        first.close()
    assert _until(lambda: sender.peers == 0)
    assert sender.send(b"two", stop)  # queued in the new socket until a receiver comes
    if mode == "connect":
        second = pynng.Pull0(recv_timeout=5000)
        second.listen(sender.endpoint)
    else:
        second = _Receiver("nng", sender.endpoint).sock
    try:
        assert sender.send(b"three", stop)
        assert [second.recv(), second.recv()] == [b"two", b"three"]
        assert sender.close(5.0)
        assert sender.sent == 3
    finally:
        second.close()
