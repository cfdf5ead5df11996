"""The sharded Ray queue used as Q1 (batches) and Q2 (results), its consumer loop, and the
pipeline's one end-of-stream token (`EndOfStream`)."""

from __future__ import annotations

from ..lazy import lazy_attributes
from .eos import EndOfStream

# The rest on first use (PEP 562): the client imports Ray, and the runner's `pump` needs only
# EndOfStream where there is no Ray (bench/gpu_check.py on a bare GPU machine).
_LAZY = {
    "Full": ".client",
    "ShardedQueue": ".client",
    "shard_name": ".client",
    "QueueConsumer": ".consumer",
    "LeasedConsumer": ".leased",
    "Outbox": ".producer",
    "PayloadOwner": ".producer",
    "QueueProducer": ".producer",
    "WAIT_SLICE_S": ".reader",
    "Drained": ".reader",
    "Empty": ".reader",
    "Released": ".reader",
    "ShardStatus": ".status",
    "TooManyBlockedCalls": ".status",
}

__all__ = [
    "Drained",
    "Empty",
    "EndOfStream",
    "Full",
    "LeasedConsumer",
    "Outbox",
    "PayloadOwner",
    "QueueConsumer",
    "QueueProducer",
    "Released",
    "ShardStatus",
    "ShardedQueue",
    "TooManyBlockedCalls",
    "WAIT_SLICE_S",
    "shard_name",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
