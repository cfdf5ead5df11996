"""Actor placement by role, and runtime environments that merge instead of replacing.

Upstream lesson 12: per-actor options replaced the profiler's runtime_env, so the documented
nsys recipe captured nothing."""

from __future__ import annotations

import pytest

from peaknet_pipeline.placement import (
    ROLE_RESOURCE_SHARE,
    actor_class,
    actor_options,
    merge_runtime_env,
)


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


def test_socket_actor_is_pinned_to_its_port_resource_when_the_cluster_has_it():
    from peaknet_pipeline.config import PipelineConfig
    from peaknet_pipeline.sources import source_options

    cfg = PipelineConfig.model_validate(
        {
            "source": {
                "kind": "socket",
                "socket": {"addresses": ["tcp://0.0.0.0:12321", "tcp://0.0.0.0:12322"] * 2},
            }
        }
    )
    cluster = {"CPU": 8, "peaknet_ingest": 2, "peaknet_ingest_port_12321": 2}
    cluster["peaknet_ingest_port_12322"] = 2
    for i, port in enumerate([12321, 12322, 12321, 12322]):
        options = source_options(cfg, i, cluster)
        assert options["resources"] == {f"peaknet_ingest_port_{port}": 1}
    # A cluster without the port resources (local, or connect mode): the role's share.
    options = source_options(cfg, 0, {"CPU": 8, "peaknet_ingest": 2})
    assert options["resources"] == {"peaknet_ingest": ROLE_RESOURCE_SHARE}
    assert "resources" not in source_options(cfg, 0, {"CPU": 8})


def test_random_actors_keep_the_role_share():
    from peaknet_pipeline.config import PipelineConfig
    from peaknet_pipeline.sources import source_options

    cfg = PipelineConfig()
    cluster = {"CPU": 8, "peaknet_ingest": 1, "peaknet_ingest_port_12321": 1}
    assert source_options(cfg, 0, cluster)["resources"] == {"peaknet_ingest": ROLE_RESOURCE_SHARE}


def test_port_resource_names():
    from peaknet_pipeline.placement import ingest_port_resource

    assert ingest_port_resource("tcp://0.0.0.0:12321") == "peaknet_ingest_port_12321"
    assert ingest_port_resource("tcp://[::]:5555") == "peaknet_ingest_port_5555"
    assert ingest_port_resource("ipc:///tmp/peaknet") is None


def test_an_actor_class_is_made_once_so_ray_exports_it_once():
    # Ray pickles and fingerprints an actor class once per ActorClass (per cluster and job):
    # every queue, run and replacement asking for its own made Ray export it again.
    from ray.actor import ActorClass

    from peaknet_pipeline.control import RunControl

    made = actor_class(RunControl)
    assert isinstance(made, ActorClass) and made is actor_class(RunControl)
    assert made.__ray_metadata__.modified_class.__ray_actor_class__ is RunControl
