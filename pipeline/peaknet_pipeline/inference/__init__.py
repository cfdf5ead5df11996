"""The inference stage: actors that run PeakNet on Q1 batches and put Results into Q2.

Importing this package is light (no torch): the driver calls `start_inference_actors` and
`inference_producer_id`; torch is imported inside the actors.
"""

from .actor import InferenceActor, inference_producer_id
from .launch import start_inference_actors

__all__ = ["InferenceActor", "inference_producer_id", "start_inference_actors"]
