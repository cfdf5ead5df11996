"""A restarted random source, as the run's end reads it: which events its stream produced, for
summary.json's recovery (evaluate.py) and report.html's error figure (monitor/cxifacts.py).

A replacement keeps its predecessor's stream (`source_id` random-0) under an id of its own
(random-0.1) and resumes at a batch (`start_seq`); both readers count a stream's events the
same way, through one function. Ray-free: the CXI file is written here with h5py."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.evaluate import (
    frames_per_stream,
    injected_slab_peaks,
    random_run_recovery,
    source_index,
)
from peaknet_pipeline.monitor.cxifacts import recovery_errors
from peaknet_pipeline.stats import IngestStats
from peaknet_pipeline.writer.layout import LCLS, RESULT

RANDOM = {"frame_shape": [1, 32, 32], "batch_size": 4, "num_frames": 12, "peaks_per_frame": 2}
# random-0 sent two batches and was killed; random-0.1 resumed at batch 2 and sent the last.
# As report.json holds them: the actors' IngestStats at the edge.
INGEST = [
    IngestStats("random-0", source_id="random-0", frames_out=8, start_seq=0).as_dict(),
    IngestStats("random-0.1", source_id="random-0", frames_out=4, start_seq=2).as_dict(),
]


def _cfg() -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"source": {"kind": "random", "random": RANDOM}, "model": {"kind": "threshold"}}
    )


def _cxi(path: Path, cfg: PipelineConfig, events: range) -> Path:
    """Every injected peak found exactly, as a perfect model would write them."""
    peaks = [injected_slab_peaks(cfg.source.random, e) for e in events]
    width = max(len(p) for p in peaks)
    rows, cols = np.zeros((len(peaks), width)), np.zeros((len(peaks), width))
    for i, p in enumerate(peaks):
        rows[i, : len(p)], cols[i, : len(p)] = p[:, 0], p[:, 1]
    with h5py.File(path, "w") as f:
        f[f"{LCLS}/event_id"] = np.array(list(events))
        f[f"{RESULT}/nPeaks"] = np.array([len(p) for p in peaks])
        f[f"{RESULT}/peakYPosRaw"], f[f"{RESULT}/peakXPosRaw"] = rows, cols
    return path


def test_a_source_index_is_its_streams_not_its_restarted_ids():
    assert source_index({"actor_id": "random-0.2", "source_id": "random-0"}) == 0
    assert source_index({"actor_id": "replay-3"}) == 3  # a summary without source_id
    assert source_index({"actor_id": "random-1.1"}) == 1  # its restart suffix is not the index
    assert source_index({}) is None  # a source that died before its first stats


def test_a_streams_frames_are_as_far_as_any_of_its_actors_sent():
    frames = frames_per_stream(4, [*INGEST, {}, {"actor_id": "random-1", "source_id": "random-1"}])
    assert frames == {0: 12, 1: 0}


def test_the_page_and_the_summary_count_a_restarted_sources_events_alike(tmp_path):
    cfg = _cfg()
    path = _cxi(tmp_path / "r.cxi", cfg, range(12))
    errors, events = recovery_errors({"config": cfg.model_dump(mode="json"), "ingest": INGEST},
                                     [path], max_events=100)  # fmt: skip
    assert events == 12 and errors is not None and errors.size == 24
    assert np.allclose(errors, 0.0)
    summary = random_run_recovery(cfg.source.random, [path], INGEST)
    assert summary["events"] == events and summary["recovered"] == 24
