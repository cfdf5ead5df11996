"""The sharded Ray queue used as Q1 (batches) and Q2 (results)."""

from .client import LEASE_S, Empty, EndOfStream, Full, ShardedQueue, shard_name
from .producer import Outbox, PayloadOwner, QueueProducer

__all__ = [
    "LEASE_S",
    "Empty",
    "EndOfStream",
    "Full",
    "Outbox",
    "PayloadOwner",
    "QueueProducer",
    "ShardedQueue",
    "shard_name",
]
