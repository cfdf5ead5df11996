"""The inference stage: actors that run PeakNet on Q1 batches and put Results into Q2.

Importing this package is light (no torch, no Ray, no config): the driver calls
`start_inference_actors` and `inference_producer_id`, which are imported on first use, so
`inference.engine` and `inference.runners` import on a machine without Ray or pydantic
(bench/gpu_check.py runs them on a bare GPU machine); torch is imported inside the actors.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {
    "InferenceActor": ".actor",
    "inference_producer_id": ".actor",
    "start_inference_actors": ".launch",
}

__all__ = ["InferenceActor", "inference_producer_id", "start_inference_actors"]

__getattr__ = lazy_attributes(__name__, _LAZY)
