"""The stage actors' stats: one vocabulary for every role, frozen records, and one mapping from
stage counters to the frames a run ingested, inferred and written."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from peaknet_pipeline.monitor.timeseries import Sample
from peaknet_pipeline.placement import Role
from peaknet_pipeline.stats import (
    FRAMES,
    FRAMES_KEY,
    InferenceStats,
    IngestStats,
    SocketStats,
    StageStats,
    WriterStats,
    as_dict,
    frames_done,
    total,
)

ROLES = {Role.INGEST: IngestStats, Role.INFERENCE: InferenceStats, Role.WRITER: WriterStats}
COMMON = {f.name for f in dataclasses.fields(StageStats)}


@pytest.mark.parametrize("cls", [*ROLES.values(), SocketStats])
def test_every_roles_stats_share_the_one_vocabulary(cls):
    names = {f.name for f in dataclasses.fields(cls)}
    assert COMMON <= names
    assert {"actor_id", "index", "frames_in", "frames_out", "busy_s"} <= COMMON
    # the names the roles once used for the same quantities are gone
    assert not names & {"id", "frames", "events", "batches", "bytes", "writer"}


@pytest.mark.parametrize("role, cls", ROLES.items())
def test_stats_are_frozen_and_cross_ray_by_pickle(role, cls):
    stats = cls("x-0", index=3, frames_in=5, frames_out=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.frames_out = 9
    assert pickle.loads(pickle.dumps(stats)) == stats
    record = stats.as_dict()
    assert record["role"] == role and record["actor_id"] == "x-0" and record["frames_out"] == 4
    assert as_dict(stats) == record and as_dict(None) == {} and as_dict({"a": 1}) == {"a": 1}


def test_an_ingest_actors_busy_time_is_its_source_time_less_its_waits():
    assert IngestStats("random-0", source_s=2.0, receive_s=1.5).busy_s == 0.5
    assert IngestStats("random-0", source_s=1.0, receive_s=1.0 + 1e-9).busy_s == 0.0


def test_frames_ingested_inferred_and_written_come_from_one_table():
    assert FRAMES == {"ingested": Role.INGEST, "inferred": Role.INFERENCE, "written": Role.WRITER}
    stats = [
        IngestStats("random-0", frames_in=12, frames_out=10),
        IngestStats("random-1", frames_in=6, frames_out=6),
        InferenceStats("inference-0", frames_in=16, frames_out=14),
        WriterStats("writer-0", frames_in=14, frames_out=11, hits=4),
    ]
    sample = Sample(t=1.0, actors={s.actor_id: s.as_dict() for s in stats})
    assert sample.frames() == {"ingested": 16, "inferred": 14, "written": 11}
    assert frames_done(sample.total) == sample.frames()
    assert all(sample.total(role, FRAMES_KEY) == n for role, n in zip(Role, (16, 14, 11)))


def test_the_sum_over_actors_adds_counts_kept_by_reason_and_skips_missing_ones():
    records = [{"failed": {"a": 2, "b": 1}, "n": 3}, {"failed": {}, "n": None}, {}]
    assert total(records, "failed") == 3 and total(records, "n") == 3
