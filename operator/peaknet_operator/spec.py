"""The PeakNetPipeline resource's spec: `spec.pipeline` is the pipeline config unchanged,
`spec.cluster` (camelCase, these models) is the Kubernetes side.

The defaults give a small CPU-only pipeline that fits one kind node: a head and one pod per
role, 2.5 CPUs and 4.5 GiB in total. Quantities are Kubernetes quantity strings ("500m",
"1536Mi"); requests equal limits. Every field has a description, which the CRD carries, so
`kubectl explain pnp.spec.cluster.inference` documents it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from peaknet_pipeline.budget import DEFAULT_FRAME_BYTES
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.placement import ROLES as PIPELINE_ROLES

GROUP = "peaknet.slac.stanford.edu"
VERSION = "v1alpha1"
KIND = "PeakNetPipeline"
PLURAL = "peaknetpipelines"
SINGULAR = "peaknetpipeline"
SHORT_NAMES = ["pnp"]
ROLES = PIPELINE_ROLES  # the worker groups are named after the pipeline's stage roles

CPU_PATTERN = r"^([0-9]+(\.[0-9]{1,3})?|[0-9]+m)$"
MEMORY_PATTERN = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"
Cpu = Annotated[str, StringConstraints(pattern=CPU_PATTERN)]
Memory = Annotated[str, StringConstraints(pattern=MEMORY_PATTERN)]


class KubeModel(BaseModel):
    """Base of spec.cluster models: camelCase keys, unknown keys are errors."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class Toleration(KubeModel):
    key: str | None = Field(None, description="Taint key to tolerate; null with Exists: all.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; null tolerates every effect."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="NoExecute only: how long the pod stays once tainted."
    )


class PodPlacement(KubeModel):
    cpu: Cpu = Field("500m", description="CPU of each pod (requests = limits).")
    memory: Memory = Field(
        "1Gi",
        description="Memory of each pod (requests = limits); holds the Ray object store "
        "(sized by the operator, see spec.cluster.sizing) plus the processes' heap.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must run on."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints the pods tolerate."
    )


class HeadSpec(PodPlacement):
    """The Ray head: GCS, dashboard and the driver; it runs no pipeline actors."""


class GroupSpec(PodPlacement):
    replicas: int = Field(1, ge=1, description="Worker pods of this role.")
    gpus_per_worker: int = Field(
        0, ge=0, description="nvidia.com/gpu of each pod (requests = limits); 0 for CPU only."
    )
    actors_per_worker: int = Field(
        1,
        ge=1,
        description="Pipeline actors of this role per pod (ingest: random-source actors; a "
        "socket source runs one actor per port per pod instead).",
    )


class IngestGroupSpec(GroupSpec):
    """Ingest pods run the source actors; Q1 payloads live in their object stores."""


class InferenceGroupSpec(GroupSpec):
    """Inference pods run PeakNet; `kubectl scale pnp/NAME --replicas=N` sets `replicas`."""

    cpu: Cpu = Field("1", description="CPU of each pod (requests = limits).")
    memory: Memory = Field(
        "1536Mi",
        description="Memory of each pod (requests = limits): object store (staged batches, "
        "Q2 masks) plus the actors' heap (torch, the model).",
    )
    max_replicas: int | None = Field(
        None,
        ge=1,
        description="Most inference pods the pipeline is sized for (ingest object store, queue "
        "shards): scaling within it needs no restart. null: replicas.",
    )

    @model_validator(mode="after")
    def _max_covers_replicas(self) -> InferenceGroupSpec:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"maxReplicas={self.max_replicas} is less than replicas")
        return self

    @property
    def sized_replicas(self) -> int:
        return self.max_replicas or self.replicas


class WriterGroupSpec(GroupSpec):
    """Writer pods run peak finding and the CXI writers; the output volume is mounted here."""


class OutputVolumeSpec(KubeModel):
    existing_claim: str | None = Field(
        None,
        description="An existing PersistentVolumeClaim for the CXI files (it outlives the "
        "resource). null: the operator creates one, deleted with the resource.",
    )
    storage_class_name: str | None = Field(
        None, description="Storage class of the claim the operator creates; null: the default."
    )
    size: Memory = Field("1Gi", description="Size of the claim the operator creates.")
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        default_factory=lambda: ["ReadWriteOnce"],
        min_length=1,
        description="Access modes of the output claim (for an existingClaim, state its modes): "
        "ReadWriteOnce ties the writer pods to the head's node, ReadWriteMany lets them spread; "
        "ReadWriteOncePod is refused (the head and the writers all mount it).",
    )
    mount_path: Annotated[str, StringConstraints(pattern=r"^/.*$")] = Field(
        "/data",
        description="Where the volume is mounted (head and writer pods); a relative "
        "spec.pipeline.writer.output_dir is placed under it.",
    )

    @model_validator(mode="after")
    def _one_claim_source(self) -> OutputVolumeSpec:
        if self.existing_claim and self.storage_class_name:
            raise ValueError("set existingClaim or storageClassName, not both")
        return self


class ServicePortSpec(KubeModel):
    target_port: int = Field(
        ge=1, le=65535, description="A port of spec.pipeline.source.socket.addresses."
    )
    port: int | None = Field(None, ge=1, le=65535, description="Service port; null: targetPort.")
    node_port: int | None = Field(
        None, ge=30000, le=32767, description="NodePort/LoadBalancer only; null: assigned."
    )


class IngestServiceSpec(KubeModel):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        "ClusterIP",
        description="How LCLStreamer reaches the ingest pods (socket source in bind mode).",
    )
    ports: list[ServicePortSpec] | None = Field(
        None, description="Exposed ports; null exposes every port of the socket addresses."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Service annotations (e.g. for a load balancer)."
    )


class LivePageSpec(KubeModel):
    """The live page the driver serves on the head pod (spec.pipeline.monitor.live_page: on,
    port): its port is named `live-page` and is reachable inside the cluster only."""

    service: bool = Field(
        False,
        description="Also create a ClusterIP Service <name>-live-page for the page (in-cluster "
        "only, like KubeRay's <raycluster>-head-svc, which carries the port anyway). Off: reach "
        "it with kubectl port-forward.",
    )


class MinHeapSpec(KubeModel):
    head: Memory = Field("512Mi", description="Memory the head needs besides its object store.")
    ingest: Memory = Field("384Mi", description="Heap of an ingest pod besides its store.")
    inference: Memory = Field("768Mi", description="Heap of an inference pod (torch, model).")
    writer: Memory = Field("384Mi", description="Heap of a writer pod besides its store.")


class SizingSpec(KubeModel):
    headroom_fraction: float = Field(
        0.25, ge=0, le=4, description="Object store = bytes in flight x (1 + this)."
    )
    expected_frame_bytes: int = Field(
        DEFAULT_FRAME_BYTES,
        ge=1,
        description="Bytes of one frame from a socket or replay source when "
        "spec.pipeline.inference.frame_shape is null (socket: after conversion to its dtype).",
    )
    min_heap: MinHeapSpec = Field(
        default_factory=MinHeapSpec,
        description="Memory each pod needs besides its object store; store + this must fit.",
    )


class ClusterSpec(KubeModel):
    """The Kubernetes side of a PeakNetPipeline: pods, volume, Service, sizing policy."""

    image: str = Field(
        "peaknet-pipeline:0.1.0",
        min_length=1,
        description="Image with Ray and this package (head and workers).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy of every container."
    )
    ray_version: str = Field("2.60.0", description="Ray version in the image (KubeRay uses it).")
    head: HeadSpec = Field(default_factory=HeadSpec, description="The Ray head pod.")
    ingest: IngestGroupSpec = Field(default_factory=IngestGroupSpec, description="Ingest pods.")
    inference: InferenceGroupSpec = Field(
        default_factory=InferenceGroupSpec, description="Inference pods."
    )
    writer: WriterGroupSpec = Field(default_factory=WriterGroupSpec, description="Writer pods.")
    output: OutputVolumeSpec = Field(
        default_factory=OutputVolumeSpec, description="Volume of the CXI files and reports."
    )
    ingest_service: IngestServiceSpec = Field(
        default_factory=IngestServiceSpec, description="Service in front of the ingest ports."
    )
    sizing: SizingSpec = Field(
        default_factory=SizingSpec, description="How each pod's object store is sized."
    )
    live_page: LivePageSpec = Field(
        default_factory=LivePageSpec, description="The live page's port on the head pod."
    )
    driver_service_account: str = Field(
        "peaknet-driver",
        min_length=1,
        description="ServiceAccount of the head pod, where the driver runs; it needs get on "
        "its PeakNetPipeline and patch on its status.",
    )

    def group(self, role: str) -> GroupSpec:
        return {"ingest": self.ingest, "inference": self.inference, "writer": self.writer}[role]


class ServiceSpec(KubeModel):
    """How a service is kept running. A resource is a service when its pipeline config says so
    (spec.pipeline.runtime.service: true): it runs until deleted, keeps its RayCluster between
    DAQ runs, and a driver that fails is started again on the same cluster. Ignored for a
    finite run (runtime.service false)."""

    driver_restarts: int = Field(
        3,
        ge=0,
        description="Applies when spec.pipeline.runtime.service is true. How many times the "
        "operator starts a new driver (a new RayJob on the same RayCluster, continuing the same "
        "service directory) after the driver failed; once spent, the service is Failed and its "
        "compute released. A driver stopped by `peaknet-pipeline stop` ends the service.",
    )
    restart_backoff_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Applies when spec.pipeline.runtime.service is true. Wait after a failed "
        "driver's end before starting the next one; doubles with each restart (10, 20, 40 s).",
    )


class PeakNetPipelineSpec(BaseModel):
    """spec: the pipeline config as its YAML file takes it, and the cluster it runs on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: PipelineConfig = Field(
        default_factory=PipelineConfig,
        description="The pipeline config, exactly as `peaknet-pipeline run --config` takes it "
        "(snake_case). ray.address, inference/writer actor counts and the output directory "
        "are derived from spec.cluster.",
    )
    cluster: ClusterSpec = Field(
        default_factory=ClusterSpec, description="The Kubernetes side (camelCase)."
    )
    service: ServiceSpec = Field(
        default_factory=ServiceSpec,
        description="Driver restarts of a service. Whether the resource is a service is the "
        "pipeline config's spec.pipeline.runtime.service (true: it runs until the resource is "
        "deleted, through every DAQ run); there is no separate switch here.",
    )

    @property
    def is_service(self) -> bool:
        return bool(self.pipeline.runtime.service)
