"""NVTX ranges are no-ops where they cannot be marked, and say so once when asked for."""

from __future__ import annotations

import contextlib

import pytest
import torch

from peaknet_pipeline.nvtx import nvtx_range, nvtx_wanted


def test_a_disabled_range_is_nothing():
    assert isinstance(nvtx_range("decode", False), contextlib.nullcontext)
    assert nvtx_wanted(False, "writer-0") is False


@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA build of torch can mark NVTX")
def test_asking_for_nvtx_without_cuda_torch_says_so_and_marks_nothing(caplog):
    with caplog.at_level("INFO", logger="peaknet_pipeline.nvtx"):
        assert nvtx_wanted(True, "random-0") is False
    assert "random-0: profile.nvtx is on, but this torch has no CUDA" in caplog.text
