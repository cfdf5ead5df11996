"""The effective pipeline config for cluster mode, as a ConfigMap the driver reads.

From spec.pipeline, with what spec.cluster decides: Ray at `auto` (the head the driver runs
on); inference, writer and random-source actor counts from their groups (replicas x
actorsPerWorker), and the most inference actors the pool may scale to (`max_actors`: maxReplicas
x actorsPerWorker, what the queues and object stores are sized for); a socket source in bind mode lists each address once per ingest pod (one
actor per pod and port, pinned by the port's Ray resource); queue shards as set, else derived
from the actor counts the pipeline is sized for; the output directory on the volume mount; the
live page bound to every interface of the head pod (monitor.live_page.bind: 0.0.0.0).
"""

from __future__ import annotations

import posixpath
from typing import Any

import yaml

from peaknet_pipeline.budget import derived_shards
from peaknet_pipeline.config import PipelineConfig

from ..sizing import source_actor_count
from ..spec import PeakNetPipelineSpec
from . import names
from .livepage import BIND_ALL


def effective_config(spec: PeakNetPipelineSpec, name: str | None = None) -> PipelineConfig:
    """The config `peaknet-pipeline run` gets on the cluster. A service's `{run_id}` in the
    output directory is the resource's `name`: every driver of the service (a restarted one
    too) writes into the same service directory, which it continues (its index is read back).
    So is its run id, unless the spec names one: `peaknet-pipeline stop NAME` reaches whichever
    driver attempt runs now."""
    cfg, cluster = spec.pipeline.model_dump(mode="json"), spec.cluster
    cfg["ray"]["address"] = "auto"
    cfg["inference"]["num_actors"] = (
        cluster.inference.replicas * cluster.inference.actors_per_worker
    )
    cfg["inference"]["max_actors"] = (
        cluster.inference.sized_replicas * cluster.inference.actors_per_worker
    )
    cfg["writer"]["num_actors"] = cluster.writer.replicas * cluster.writer.actors_per_worker
    source = cfg["source"]
    if source["kind"] == "random":
        source["random"]["num_actors"] = cluster.ingest.replicas * cluster.ingest.actors_per_worker
    if source["kind"] == "socket" and source["socket"]["mode"] == "bind":
        source["socket"]["addresses"] = source["socket"]["addresses"] * cluster.ingest.replicas
    n_src = source_actor_count(spec.pipeline, cluster)
    n_inf = cluster.inference.sized_replicas * cluster.inference.actors_per_worker
    n_wri = cfg["writer"]["num_actors"]
    for which, producers, consumers in (("q1", n_src, n_inf), ("q2", n_inf, n_wri)):
        queue = cfg["queue"][which]
        queue["num_shards"] = derived_shards(
            queue["num_shards"], producers, consumers, queue["capacity_items"]
        )
    out = cfg["writer"]["output_dir"]
    if spec.is_service and name is not None:
        out = out.replace("{run_id}", name)
        cfg["runtime"]["run_id"] = cfg["runtime"]["run_id"] or name
    cfg["writer"]["output_dir"] = posixpath.join(cluster.output.mount_path, out)
    # the live page on the pod's IP (in-cluster only; port-forward reaches it): livepage.py
    cfg["monitor"]["live_page"]["bind"] = BIND_ALL
    return PipelineConfig.model_validate(cfg)


def config_text(spec: PeakNetPipelineSpec, name: str | None = None) -> str:
    config = effective_config(spec, name).model_dump(mode="json")
    return yaml.safe_dump(config, sort_keys=False)


def render_configmap(name: str, namespace: str, spec: PeakNetPipelineSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": names.metadata(name, namespace, names.configmap_name(name), "config"),
        "data": {names.CONFIG_FILE: config_text(spec, name)},
    }
