"""The sharded Ray queue used as Q1 (batches) and Q2 (results)."""

from .client import LEASE_S, Empty, EndOfStream, Full, ShardedQueue, shard_name
from .producer import Outbox, PayloadOwner, QueueProducer
from .shard import TooManyBlockedCalls

__all__ = [
    "LEASE_S",
    "Empty",
    "EndOfStream",
    "Full",
    "Outbox",
    "PayloadOwner",
    "QueueProducer",
    "ShardedQueue",
    "TooManyBlockedCalls",
    "shard_name",
]
