"""NVTX ranges: named spans of each stage's work on an Nsight Systems (nsys) timeline.

Inference marks its ranges (fetch, stage, h2d, compute, d2h, d2h_wait, put) whenever it runs on
CUDA. Ingest (source, receive, receive_wait, decode, q1_put) and writer actors (q2_get, fetch,
find_peaks, write_cxi) run where there may be no GPU and do not load torch for themselves; they
mark their ranges when `profile.nvtx` is on, so one capture shows the whole path. Marking needs
a CUDA build of torch; elsewhere every range is a no-op.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)


def nvtx_range(name: str, enabled: bool):
    """An NVTX range named `name` while the block runs, when `enabled`; else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    import torch

    return torch.cuda.nvtx.range(name)


def nvtx_wanted(asked: bool, who: str) -> bool:
    """Whether `who` (an ingest or writer actor) marks NVTX ranges: `profile.nvtx` is on and
    torch is a CUDA build (said once when it is not)."""
    if not asked:
        return False
    import torch

    if torch.version.cuda is None:
        log.info("%s: profile.nvtx is on, but this torch has no CUDA (no NVTX): not marked", who)
        return False
    return True
