"""Bad input never stops the ingest: 1,200 mutated messages between valid ones, counted exactly.

Each mutated message is classified by decoding it here first (a byte flip may leave a message
valid, with different numbers in it; that is fine and counted as valid). The source must then
deliver exactly the frames of the messages that decode, and count every other one by kind.
Frames are tiny so the whole stream takes a few seconds.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter

import h5py
import numpy as np
import pytest

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.sources.push import PUSH_EXTRA
from peaknet_pipeline.sources.socket import SocketSource
from peaknet_pipeline.sources.transport import nng_tx_messages
from peaknet_pipeline.sources.wire import KINDS, Decoder, WireError, encode

B, H, W = 2, 8, 8
MAX_BYTES = 32768
NAMES = {
    "hdf5": {
        "images": "/data/data",
        "timestamp": "/data/timestamp",
        "wavelength": "/data/wavelength",
        "event_id": "/data/event_id",
    },
    "npz": {
        "images": "detector_data",
        "timestamp": "timestamp",
        "wavelength": "photon_wavelength",
        "event_id": "event_id",
    },
}


def _cfg(fmt: str, transport: str = "zmq") -> PipelineConfig:
    socket = {
        "transport": transport,
        "format": fmt,
        "addresses": ["tcp://127.0.0.1:0"],
        "idle_timeout_s": 0.5,
        "max_message_bytes": MAX_BYTES,
        "recv_hwm": 100,
        fmt: {"extra": PUSH_EXTRA[fmt]},
    }
    return PipelineConfig.model_validate({"source": {"kind": "socket", "socket": socket}})


def _fields(event: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(event)
    return {
        "images": rng.poisson(5, (B, 1, H, W)).astype(np.float32),
        "timestamp": np.arange(B, dtype=np.float64) + event,
        "wavelength": np.full(B, 0.13),
        "event_id": np.arange(event, event + B),
    }


def _container(fmt: str, fields: dict[str, np.ndarray]) -> bytes:
    """Write arrays under the configured names, whatever their shapes (to break them)."""
    named = {NAMES[fmt].get(k, k): v for k, v in fields.items()}
    out = io.BytesIO()
    if fmt == "npz":
        np.savez(out, **named)
        return out.getvalue()
    with h5py.File(out, "w") as f:
        for path, arr in named.items():
            f.create_dataset(path, data=arr)
    return out.getvalue()


# Field-level breakage with the kind each must be counted as.
def _without(fields: dict, key: str) -> dict:
    return {k: v for k, v in fields.items() if k != key}


BREAKAGE = {
    "missing_field": lambda f: _without(f, "timestamp"),
    "renamed": lambda f: {**_without(f, "wavelength"), "wl": f["wavelength"]},
    "bad_rank": lambda f: {**f, "images": f["images"][:, 0, 0]},
    "bad_dtype": lambda f: {**f, "images": f["images"].astype(bool)},
    "batch_mismatch": lambda f: {**f, "event_id": f["event_id"][:1]},
    "non_finite": lambda f: {**f, "images": np.where(f["images"] > 8, np.nan, f["images"])},
}
BREAKAGE_KIND = {"renamed": "missing_field"}


def _valid(fmt: str, event: int, compression: str = "none") -> bytes:
    f = _fields(event)
    meta = {
        "timestamp": f["timestamp"],
        "wavelength_nm": f["wavelength"],
        "event_id": f["event_id"],
    }
    return encode(f["images"], meta, _cfg(fmt).source.socket, compression)


def _mutate(rng: np.random.Generator, fmt: str, event: int, i: int) -> tuple[bytes, str | None]:
    """A mutated message and the kind it must be counted as (None: decide by decoding)."""
    compression = ("none", "gzip", "bitshuffle_lz4")[i % 3] if fmt == "hdf5" else "none"
    good = _valid(fmt, event, compression)
    how = i % 5
    if how == 0:
        return good[: int(rng.integers(0, len(good)))], "truncated"
    if how == 1:
        noise = rng.integers(0, 256, int(rng.integers(8, 4000)), dtype=np.uint8)
        return noise.tobytes(), f"not_{fmt}"
    if how == 2:
        name = list(BREAKAGE)[int(rng.integers(len(BREAKAGE)))]
        return _container(fmt, BREAKAGE[name](_fields(event))), BREAKAGE_KIND.get(name, name)
    if how == 3 and i % 15 == 3:
        return good + bytes(MAX_BYTES), "oversized"
    flipped = bytearray(good)
    for pos in rng.integers(0, len(good), int(rng.integers(1, 4))):
        flipped[pos] ^= 1 << int(rng.integers(8))
    return bytes(flipped), None


def _stream(fmt: str, count: int, seed: int) -> tuple[list[bytes], Counter, list[int]]:
    """Valid and mutated messages interleaved, the bad kinds expected, the event ids expected."""
    rng, decoder = np.random.default_rng(seed), Decoder(_cfg(fmt).source.socket)
    messages, bad, ids = [], Counter(), []
    for i in range(count):
        mutated, expected = _mutate(rng, fmt, 10 * i + 5, i)
        messages += [_valid(fmt, 10 * i), mutated]
        ids += list(range(10 * i, 10 * i + B))
        try:
            _, meta = decoder(mutated)
        except WireError as err:
            assert err.kind in KINDS
            assert expected in (None, err.kind), (i, expected, err)
            bad[err.kind] += 1
        else:
            assert expected is None, (i, expected)
            ids += [int(e) for e in meta["event_id"]]
    return messages, bad, sorted(ids)


def _send(endpoint: str, messages: list[bytes], transport: str) -> None:
    if transport == "nng":
        import pynng

        with pynng.Push0(send_timeout=30_000) as sock:
            sock.dial(endpoint, block=True)
            for msg in messages:
                sock.send(msg)
            while nng_tx_messages(sock) < len(messages):  # as the pusher waits at exit
                time.sleep(0.01)
            return
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(endpoint)
    for msg in messages:
        sock.send(msg)
    sock.close(linger=30_000)
    ctx.term()


@pytest.mark.parametrize("fmt", ["hdf5", "npz"])
def test_socket_source_survives_and_counts_mutated_messages(fmt):
    """The ingest loop itself (no Ray): real zmq socket, 600 mutated + 600 valid messages."""
    messages, bad, ids = _stream(fmt, 600, seed=11 if fmt == "hdf5" else 12)
    assert sum(bad.values()) >= 400 and len(bad) >= 6, bad  # every class of damage showed up
    source = SocketSource("socket-0", None, _cfg(fmt), 0)
    source.ready()
    got: list[int] = []
    consumer = threading.Thread(
        target=lambda: got.extend(int(e) for _, m in source.batches() for e in m["event_id"])
    )
    consumer.start()
    _send(source.endpoint(), messages, "zmq")
    consumer.join(timeout=60)
    assert not consumer.is_alive()
    assert source.end_reason().startswith("idle timeout")
    stats = source.stats()
    assert stats.messages == len(messages)
    assert sorted(got) == ids  # every valid frame, and the frames of flips that stayed valid
    assert Counter(stats.bad_messages) == bad and stats.bad_total == sum(bad.values())


@pytest.mark.ray
def test_socket_actor_survives_bad_input_into_q1(ray_session, unique_name):
    """A shorter run through the Ray actor over nng: Q1 gets exactly the decodable frames."""
    import ray

    from peaknet_pipeline.queue import EndOfStream, ShardedQueue

    messages, bad, ids = _stream("hdf5", 100, seed=13)
    q1 = ShardedQueue.create(unique_name)
    try:
        q1.register_producer("socket-0")
        actor = ray.remote(SocketSource).options(max_concurrency=4, num_cpus=0.5)
        handle = actor.remote("socket-0", q1, _cfg("hdf5", "nng"), 0)
        run = handle.run.remote()
        _send(ray.get(handle.endpoint.remote(), timeout=60), messages, "nng")
        batches = []
        try:
            while True:
                batches += q1.get_many(64, timeout=60)
        except EndOfStream:
            pass
        summary = ray.get(run, timeout=60)
        assert sorted(int(e) for b in batches for e in b.meta["event_id"]) == ids
        assert Counter(summary.bad_messages) == bad and summary.messages == 200
        assert summary.ended_by.startswith("idle timeout")
    finally:
        q1.destroy()
