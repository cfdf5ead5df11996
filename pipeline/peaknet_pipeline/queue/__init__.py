"""The sharded Ray queue used as Q1 (batches) and Q2 (results)."""

from .client import (
    WAIT_SLICE_S,
    Drained,
    Empty,
    EndOfStream,
    Full,
    Released,
    ShardedQueue,
    shard_name,
)
from .producer import Outbox, PayloadOwner, QueueProducer
from .shard import TooManyBlockedCalls

__all__ = [
    "Drained",
    "Empty",
    "EndOfStream",
    "Full",
    "Outbox",
    "PayloadOwner",
    "QueueProducer",
    "Released",
    "ShardedQueue",
    "TooManyBlockedCalls",
    "WAIT_SLICE_S",
    "shard_name",
]
