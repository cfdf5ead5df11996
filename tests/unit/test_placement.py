"""Actor placement by role, and runtime environments that merge instead of replacing.

Upstream lesson 12: per-actor options replaced the profiler's runtime_env, so the documented
nsys recipe captured nothing."""

from __future__ import annotations

import pytest

from peaknet_pipeline.placement import ROLE_RESOURCE_SHARE, actor_options, merge_runtime_env


def test_merge_keeps_the_profiler_and_merges_env_vars():
    base = {"nsight": "default", "env_vars": {"A": "1", "B": "2"}}
    merged = merge_runtime_env(base, {"env_vars": {"B": "3", "C": "4"}})
    assert merged == {"nsight": "default", "env_vars": {"A": "1", "B": "3", "C": "4"}}
    assert base["env_vars"] == {"A": "1", "B": "2"}  # inputs are not modified


def test_role_resource_is_requested_only_when_the_cluster_has_it():
    plain = actor_options("inference", 1.0, cluster_resources={"CPU": 8})
    assert plain == {"num_cpus": 1.0}
    placed = actor_options("inference", 1.0, 1.0, cluster_resources={"CPU": 8, "peaknet_infer": 2})
    assert placed["resources"] == {"peaknet_infer": ROLE_RESOURCE_SHARE}
    assert placed["num_gpus"] == 1.0


def test_actor_options_carry_the_merged_runtime_env():
    options = actor_options(
        "inference",
        1.0,
        runtime_env={"env_vars": {"X": "1"}},
        base_runtime_env={"nsight": {"t": "cuda,nvtx"}},
    )
    assert options["runtime_env"] == {"nsight": {"t": "cuda,nvtx"}, "env_vars": {"X": "1"}}


def test_unknown_role_is_named():
    with pytest.raises(ValueError, match="unknown role 'gpu'"):
        actor_options("gpu", 1.0)
