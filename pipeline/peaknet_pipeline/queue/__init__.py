"""The sharded Ray queue used as Q1 (batches) and Q2 (results), its consumer loop, and the
pipeline's one end-of-stream token (`EndOfStream`)."""

from .client import (
    WAIT_SLICE_S,
    Drained,
    Empty,
    Full,
    Released,
    ShardedQueue,
    shard_name,
)
from .consumer import QueueConsumer
from .eos import EndOfStream
from .producer import Outbox, PayloadOwner, QueueProducer
from .shard import TooManyBlockedCalls

__all__ = [
    "Drained",
    "Empty",
    "EndOfStream",
    "Full",
    "Outbox",
    "PayloadOwner",
    "QueueConsumer",
    "QueueProducer",
    "Released",
    "ShardedQueue",
    "TooManyBlockedCalls",
    "WAIT_SLICE_S",
    "shard_name",
]
