"""Wheels that travel with the working tree to a bare GPU machine (`make gpu-wheels` fetches
them into build/gpu-wheels/): unpacked onto sys.path by bench/gpu_check.py itself, so running
the check stays one command with no pip step. Standard library only."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def add_wheels(folder: Path, site: Path) -> list[str]:
    """Unpack the pure-Python wheels in `folder` into `site` and put it first on sys.path
    (what `pip install --target` does for such a wheel). Returns the wheels' names."""
    names = sorted(p.name for p in folder.glob("*.whl")) if folder.is_dir() else []
    for name in names:
        with zipfile.ZipFile(folder / name) as wheel:
            wheel.extractall(site)
    if names:
        sys.path.insert(0, str(site))
    return names
