"""Records: small descriptions of data held in the object store; metadata of length B."""

from __future__ import annotations

import numpy as np
import pytest

from peaknet_pipeline.records import Batch, Result, check_meta


def _batch(b=3, shape=(1, 8, 12), dtype=np.float32):
    images = np.zeros((b, *shape), dtype)
    return Batch.describe(images, {"event_id": np.arange(b)}, "src-0", 7)


def test_describe_records_shape_dtype_and_bytes():
    batch = _batch()
    assert batch.shape == (3, 1, 8, 12)
    assert batch.size == 3
    assert batch.nbytes == 3 * 8 * 12 * 4
    assert np.dtype(batch.dtype) == np.float32
    assert batch.images is None


def test_batch_size_may_vary():
    assert _batch(b=1).size == 1
    assert _batch(b=5).size == 5


def test_metadata_must_have_one_value_per_event():
    images = np.zeros((4, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="'timestamp'.*expected first dimension 4"):
        Batch.describe(images, {"timestamp": np.zeros(3)}, "s", 0)
    with pytest.raises(ValueError, match="'photon_energy_ev'"):
        check_meta({"photon_energy_ev": 9500.0}, 4)


def test_images_must_be_rank_four():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Batch.describe(np.zeros((4, 2, 2)), {}, "s", 0)


def test_with_payload_returns_a_new_record():
    batch = _batch()
    stored = batch.with_payload("ref")
    assert stored.images == "ref" and batch.images is None
    assert stored.meta is batch.meta


def test_result_counts_output_and_the_input_it_keeps_alive():
    batch = _batch(b=2, shape=(1, 4, 4))
    result = Result(batch, "mask", (2, 1, 4, 4), "|u1", "inference-0")
    assert result.nbytes == 2 * 16 * 1 + batch.nbytes
    assert result.size == 2
    assert result.with_payload("r").output == "r"
