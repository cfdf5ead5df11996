"""The inference stage: actors that run PeakNet on Q1 batches and put Results into Q2.

Importing this package is light (no torch, no Ray, no config): the driver calls
`start_inference_actors` and `inference_producer_id`, which are imported on first use, so
`inference.engine` and `inference.runners` import on a machine without Ray or pydantic
(bench/gpu_check.py runs them on a bare GPU machine); torch is imported inside the actors.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "InferenceActor": ".actor",
    "inference_producer_id": ".actor",
    "start_inference_actors": ".launch",
}

__all__ = ["InferenceActor", "inference_producer_id", "start_inference_actors"]


def __getattr__(name: str) -> Any:
    """PEP 562: the actor and its launcher (which import the config and Ray) on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
