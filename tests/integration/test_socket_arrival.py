"""The socket source stamps each event's arrival when its message is received, not when the
batch is made from it (records.ARRIVAL_T): the ingest loop alone (no Ray), fed by
`peaknet-pipeline push` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from helpers import STARTED_PUSHERS
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.records import ARRIVAL_T
from peaknet_pipeline.sources.push import PUSH_EXTRA
from peaknet_pipeline.sources.socket import SocketSource

DECODE_S = 0.3  # a slow decoder: the batch is made this long after its message arrived


class SlowDecoder:
    """The source's decoder, taking DECODE_S longer per message."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder

    def __call__(self, buffer):
        time.sleep(DECODE_S)
        return self.decoder(buffer)

    def __getattr__(self, name: str):
        return getattr(self.decoder, name)


def test_each_event_carries_its_messages_receipt_time():
    socket = {
        "format": "hdf5",
        "addresses": ["tcp://127.0.0.1:0"],
        "idle_timeout_s": 1.0,
        "start_timeout_s": 30.0,
        "hdf5": {"extra": PUSH_EXTRA["hdf5"]},
    }
    cfg = PipelineConfig.model_validate({"source": {"kind": "socket", "socket": socket}})
    source = SocketSource("socket-0", None, cfg, 0)
    source.ready()
    source.decode = SlowDecoder(source.decode)
    cmd = [sys.executable, "-m", "peaknet_pipeline.sources.push", "--address", source.endpoint()]
    cmd += ["--num-frames", "16", "--batch-size", "8", "--shape", "16", "16"]
    pusher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED_PUSHERS.append(pusher)
    started = time.time()
    made = [(time.time(), images.shape[0], meta) for images, meta in source.batches()]
    assert pusher.wait(timeout=60) == 0, pusher.stderr.read()
    assert [n for _, n, _ in made] == [8, 8]
    for at, n, meta in made:
        arrival = meta[ARRIVAL_T]
        assert arrival.dtype == np.float64 and arrival.shape == (n,)
        assert len(set(arrival.tolist())) == 1  # one message, one receipt
        assert started <= arrival[0] <= at - DECODE_S  # received before the slow decode
