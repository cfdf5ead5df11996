"""Package attributes imported on first use (PEP 562), for the packages whose modules must load
on a machine without Ray, pydantic or h5py: bench/gpu_check.py imports the model, the engine,
the runner, the end-of-stream token and the peak finders on a bare GPU machine."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports name `n` from its submodule
    `where[n]` (relative, e.g. ".actor") when first asked for, and keeps it in the package."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__
