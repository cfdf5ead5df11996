"""The configuration schema: one set of pydantic models behind the YAML file, `--set` and the CRD.

Every field has a description and a default that works on a laptop; units are in field names.
Unknown keys are errors (``extra="forbid"``) so a typo never silently falls back to a default.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from .base import Section
from .crystal import CrystalConfig
from .geometry import GeometryConfig
from .profile import ProfileConfig

GiB = 1 << 30
COMPRESSION_LEVELS = {"gzip": (0, 9), "zstd": (1, 22)}  # writer.compression_level ranges
METADATA_KEY = r"^[A-Za-z_][A-Za-z0-9_]*$"  # pass-through field names (HDF5 dataset names)
# At most this many pass-through fields per message format: bounds the Kubernetes CRD's key-pattern
# rule (its CEL cost is estimated per possible key; unbounded, it exceeds the per-call budget).
MAX_EXTRA_FIELDS = 64


def _shape_field(default: list[int] | None, what: str):
    return Field(default=default, min_length=3, max_length=3, description=what)


class RayConfig(Section):
    address: str = Field(
        "local",
        description="'local' starts an embedded Ray instance in this process; 'auto' joins the "
        "cluster this machine belongs to; 'ray://host:10001' joins a remote cluster.",
    )
    namespace: str = Field(
        "peaknet", description="Ray namespace for named actors (queue shards attach by name)."
    )
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of an embedded instance; null uses the machine's."
    )
    object_store_memory_bytes: int | None = Field(
        None,
        ge=78_643_200,
        description="Object store size of an embedded instance; null lets Ray choose (30% of RAM).",
    )
    include_dashboard: bool = Field(False, description="Start the Ray dashboard (embedded only).")
    metrics_export_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of the Prometheus endpoint (http://<node>:<port>/metrics) of an "
        "embedded instance, where the peaknet_* metrics appear as ray_peaknet_*; null lets Ray "
        "choose. A cluster's port is set where the cluster starts (`ray start`, KubeRay).",
    )
    object_store_budget_fraction: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Most of the object store the run may fill: the bytes the queues, "
        "inference buffers and writer prefetch can hold at once must fit in this fraction of "
        "it, or the run does not start (docs/tuning.md gives the formula). Ray spills objects "
        "to disk when its store is 80% full.",
    )


class RandomSourceConfig(Section):
    num_actors: int = Field(1, ge=1, description="Generator actors; events are split among them.")
    frame_shape: list[int] = _shape_field([1, 256, 256], "Frame shape (C, H, W) in pixels.")
    dtype: Literal["float32", "float16", "float64", "uint16", "int32"] = Field(
        "float32", description="Pixel dtype of generated frames."
    )
    batch_size: int = Field(8, ge=1, description="Frames per batch (the last batch may be short).")
    num_frames: int = Field(
        256, ge=0, description="Frames to generate in total; 0 generates until stopped."
    )
    rate_hz: float = Field(
        0.0, ge=0, description="Frames per second per actor; 0 generates as fast as possible."
    )
    peaks_per_frame: int = Field(20, ge=0, description="Bragg-like peaks injected per frame.")
    peak_sigma_px: float = Field(1.0, gt=0, description="Gaussian width of injected peaks.")
    peak_amplitude: float = Field(200.0, gt=0, description="Peak height above background.")
    min_peak_separation_px: float = Field(
        8.0, ge=0, description="Minimum distance between injected peak centres."
    )
    background_mean: float = Field(10.0, ge=0, description="Mean of the Poisson-like background.")
    pool_size: int = Field(
        8, ge=1, description="Pre-generated background frames that batches are varied from."
    )
    seed: int = Field(0, description="Seed; peak positions are reproducible from (seed, event id).")
    photon_energy_ev: float = Field(9500.0, gt=0, description="Photon energy stamped on events.")
    crystal: CrystalConfig | None = Field(
        None,
        description="Peaks where a crystal puts its Bragg spots (unit cell, random orientation "
        "per event, photon_energy_ev, the detector of writer.geometry; peaks_per_frame is "
        "then unused). null: peaks_per_frame peaks at random positions.",
    )

    @model_validator(mode="after")
    def _room_for_peaks(self) -> RandomSourceConfig:
        smallest = min(self.frame_shape[1:])
        needed = 2 * (math.ceil(3 * self.peak_sigma_px) + 1) + 2
        if self.peaks_per_frame and smallest < needed:
            raise ValueError(
                f"frame_shape {self.frame_shape} is too small for peaks with peak_sigma_px="
                f"{self.peak_sigma_px}: H and W must be at least {needed} (or peaks_per_frame: 0)"
            )
        return self


class Hdf5FieldsConfig(Section):
    images: str = Field("/data/data", description="Dataset with detector images (B,[1,]H,W).")
    timestamp: str | None = Field("/data/timestamp", description="Per-event timestamps (B,).")
    wavelength: str | None = Field(
        "/data/wavelength", description="Per-event wavelength (B,), unit in wavelength_unit."
    )
    photon_energy: str | None = Field(None, description="Per-event photon energy in eV (B,).")
    extra: dict[Annotated[str, StringConstraints(pattern=METADATA_KEY)], str] = Field(
        default_factory=dict,
        max_length=MAX_EXTRA_FIELDS,
        description="Pass-through fields: metadata key (letters, digits, _) -> dataset path.",
    )


class NpzFieldsConfig(Section):
    images: str = Field("detector_data", description="Array with detector images (B,[C,]H,W).")
    timestamp: str | None = Field("timestamp", description="Per-event timestamps (B,).")
    wavelength: str | None = Field(
        "photon_wavelength", description="Per-event wavelength (B,), unit in wavelength_unit."
    )
    photon_energy: str | None = Field(None, description="Per-event photon energy in eV (B,).")
    original_shape: str | None = Field(
        "detector_data_original_shape",
        description="[B, C, H, W] before the streamer zero-padded; frames are cropped back to it.",
    )
    extra: dict[Annotated[str, StringConstraints(pattern=METADATA_KEY)], str] = Field(
        default_factory=dict,
        max_length=MAX_EXTRA_FIELDS,
        description="Pass-through fields: metadata key (letters, digits, _) -> array name.",
    )


class DaqRunConfig(Section):
    """How a service (runtime.service) tells one DAQ run from the next in a socket stream."""

    field: str | None = Field(
        None,
        description="Message field carrying the DAQ run (HDF5 dataset path or NPZ array name): "
        "LCLStreamer's psana2 run_info (B, 4) strings (experiment, run start time, run number, "
        "source id; NPZ only: its HDF5 serializer cannot carry them) or an integer run number "
        "(B,). null: a pause longer than gap_s starts a new DAQ run.",
    )
    gap_s: float = Field(
        10.0,
        gt=0,
        description="Without a run field, a pause longer than this between messages starts a "
        "new DAQ run.",
    )


class SocketSourceConfig(Section):
    transport: Literal["zmq", "nng"] = Field(
        "zmq", description="zmq (PULL, what LCLStreamer speaks today) or nng (Pull0, older)."
    )
    addresses: list[str] = Field(
        default_factory=lambda: ["tcp://0.0.0.0:12321"],
        min_length=1,
        description="One ingest actor per address; several ports form several streams.",
    )
    mode: Literal["bind", "connect"] = Field(
        "bind", description="bind: streamer ranks connect to us (usual); connect: we dial them."
    )
    format: Literal["hdf5", "npz"] = Field("hdf5", description="Message format.")
    hdf5: Hdf5FieldsConfig = Field(default_factory=Hdf5FieldsConfig)
    npz: NpzFieldsConfig = Field(default_factory=NpzFieldsConfig)
    wavelength_unit: Literal["nm", "angstrom"] = Field(
        "nm", description="Unit of the wavelength field (the LCLS PV streamed is in nm)."
    )
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="Images are converted to this dtype (float64 input is common)."
    )
    frames_per_message: int = Field(
        8,
        ge=1,
        description="Most frames in one Q1 batch: LCLStreamer's batch size (frames per "
        "message). A message with more frames is split into batches of this many. The "
        "object-store check sizes a batch by it (with inference.frame_shape).",
    )
    non_finite: Literal["reject", "zero"] = Field(
        "reject", description="NaN/inf pixels: reject the message, or set those pixels to 0."
    )
    max_message_bytes: int = Field(
        4 * GiB, ge=1024, description="Messages larger than this are rejected unread."
    )
    recv_hwm: int = Field(
        4, ge=1, description="Receive high-water mark (messages) before the sender is blocked."
    )
    start_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Give up if no first message arrives in time; null waits forever. "
        "Not applied under runtime.service.",
    )
    idle_timeout_s: float | None = Field(
        60.0,
        gt=0,
        description="End the stream after this long without a message; null: never. "
        "Not applied under runtime.service.",
    )
    max_frames: int = Field(0, ge=0, description="End after this many frames per actor; 0: never.")
    daq_run: DaqRunConfig = Field(
        default_factory=DaqRunConfig,
        description="DAQ run boundaries under runtime.service: a run field, else pauses.",
    )


class ReplaySourceConfig(Section):
    paths: list[str] = Field(
        default_factory=list, description="HDF5/CXI files to stream, in order."
    )
    images_dataset: str = Field(
        "/entry_1/data_1/data", description="Dataset of frames (N,[C,]H,W)."
    )
    photon_energy_dataset: str | None = Field(
        "/LCLS/photon_energy_eV", description="Per-event photon energy in eV, when present."
    )
    timestamp_dataset: str | None = Field(
        None, description="Per-event timestamps, passed through when present."
    )
    batch_size: int = Field(8, ge=1, description="Frames per batch.")
    repeat: int = Field(1, ge=1, description="Stream the files this many times.")
    rate_hz: float = Field(0.0, ge=0, description="Frames per second; 0 as fast as possible.")


class SourceConfig(Section):
    kind: Literal["random", "socket", "replay"] = Field(
        "random", description="Which source feeds Q1; only that kind's section is used."
    )
    num_cpus_per_actor: float = Field(0.5, gt=0, description="Ray CPUs reserved per ingest actor.")
    random: RandomSourceConfig = Field(default_factory=RandomSourceConfig)
    socket: SocketSourceConfig = Field(default_factory=SocketSourceConfig)
    replay: ReplaySourceConfig = Field(default_factory=ReplaySourceConfig)


class QueueConfig(Section):
    num_shards: int | None = Field(
        None, ge=1, description="Shard actors; null derives it from the producer/consumer counts."
    )
    capacity_items: int = Field(
        64,
        ge=1,
        description="Most records queued at once, split over the shards (at least one each).",
    )
    capacity_bytes: int = Field(
        2 * GiB, ge=1, description="Most payload bytes queued at once (all shards)."
    )
    max_blocked_calls_per_shard: int = Field(
        128,
        ge=1,
        description="Most puts/gets one shard lets wait at once; each holds a shard thread. "
        "Needs at least consumers + producers x their windows; one more fails with an error.",
    )

    @model_validator(mode="after")
    def _a_record_per_shard(self) -> QueueConfig:
        if self.num_shards and self.num_shards > self.capacity_items:
            raise ValueError(
                f"num_shards={self.num_shards} is more than capacity_items="
                f"{self.capacity_items}: every shard must hold at least one record"
            )
        return self


class QueuesConfig(Section):
    q1: QueueConfig = Field(
        default_factory=QueueConfig, description="Batches of frames, ingest -> inference."
    )
    q2: QueueConfig = Field(
        default_factory=QueueConfig, description="Segmentation results, inference -> writers."
    )
    persist: bool = Field(False, description="Keep the shard actors alive after the run ends.")
    lease_s: float = Field(
        60.0,
        gt=0,
        description="A record handed to a consumer comes back if not acknowledged and not "
        "extended for this long (consumers extend every third of it while alive).",
    )
    max_deliveries: int = Field(
        3,
        ge=1,
        description="Times a record is handed out before it goes to the dead letters (a "
        "record that kills every consumer it meets must not loop forever).",
    )


class ModelConfig(Section):
    kind: Literal["peaknet", "threshold"] = Field(
        "peaknet",
        description="peaknet: the segmentation network. threshold: marks pixels above "
        "`threshold` (a test/debug oracle that checks the pipeline, not a peak finder).",
    )
    weights_path: str | None = Field(
        None,
        description="State dict of an upstream-compatible checkpoint. A path that does not "
        "exist is an error; null runs randomly initialised weights (logged as such).",
    )
    seed: int = Field(0, description="Seed of the random initialisation when no weights are given.")
    hidden_sizes: list[int] = Field(
        default_factory=lambda: [96, 192, 384, 768],
        min_length=4,
        max_length=4,
        description="ConvNeXt-V2 stage widths.",
    )
    depths: list[int] = Field(
        default_factory=lambda: [3, 3, 9, 3],
        min_length=4,
        max_length=4,
        description="ConvNeXt-V2 blocks per stage.",
    )
    bifpn_num_blocks: int = Field(2, ge=1, description="BiFPN blocks.")
    bifpn_num_features: int = Field(256, ge=1, description="BiFPN feature width F.")
    seg_out_channels: int = Field(256, ge=1, description="Segmentation head width S.")
    num_classes: int = Field(2, ge=2, description="Output classes (1 = Bragg peak).")
    uses_learned_upsample: bool = Field(
        False, description="Add the learned transposed-conv upsampling (the 673M model)."
    )
    threshold: float = Field(50.0, description="threshold kind only: pixel value marking a peak.")

    @field_validator("seg_out_channels")
    @classmethod
    def _group_norm_divisible(cls, v: int) -> int:
        if v % 32:
            raise ValueError("must be a multiple of 32 (GroupNorm with 32 groups)")
        return v


class InferenceConfig(Section):
    num_actors: int = Field(
        1,
        ge=1,
        description="Inference actors at the start (one per GPU on GPU nodes); the pool can "
        "be scaled while running (`peaknet-pipeline scale`, or the resource's replicas).",
    )
    max_actors: int | None = Field(
        None,
        ge=1,
        description="Most inference actors the pool may scale to; the queues are sized for "
        "it. null: num_actors (no scaling up).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses CUDA when the actor was given a GPU, else the CPU."
    )
    num_gpus_per_actor: float = Field(
        1.0, gt=0, le=8, description="GPUs per actor on CUDA (fractions share a GPU)."
    )
    num_cpus_per_actor: float = Field(1.0, gt=0, description="Ray CPUs reserved per actor.")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads for torch; null uses the actor's CPUs."
    )
    buffer_depth: int = Field(
        2, ge=1, le=16, description="N-way buffering: batches staged ahead of compute."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast precision.")
    compile: bool = Field(False, description="torch.compile the model (slow first batch).")
    channels_last: bool = Field(False, description="Use channels-last memory format.")
    pad_mode: Literal["center", "bottom_right", "none"] = Field(
        "center",
        description="Pad frames to a multiple of 32 and crop outputs back; none requires H, W "
        "to be multiples of 32 already.",
    )
    normalize: bool = Field(
        True, description="Per-image (x - mean) / sqrt(var + 1e-6) before the model."
    )
    output: Literal["mask", "logits"] = Field(
        "mask", description="mask: uint8 peak mask (argmax on device); logits: float32 logits."
    )
    peaks_on_device: bool = Field(
        False,
        description="With output mask: reduce each mask to peak lists (writer.connectivity, "
        "size filters, max_peaks) where it was computed, so Q2 carries peak lists, not masks, "
        "and writers fetch frames only for the rows they write.",
    )
    frame_shape: list[int] | None = _shape_field(
        None,
        "Expected frame shape (C, H, W): used for warm-up, and other shapes are rejected. "
        "null warms up on the first batch and accepts any shape.",
    )
    warmup_iters: int = Field(1, ge=0, description="Forward passes before the first real batch.")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra Ray runtime_env of the inference actors, merged into (never "
        "replacing) what the pipeline sets; e.g. {nsight: default} profiles them with nsys.",
    )

    @model_validator(mode="after")
    def _max_covers_start(self) -> InferenceConfig:
        if self.max_actors is not None and self.max_actors < self.num_actors:
            raise ValueError(
                f"max_actors={self.max_actors} is less than num_actors={self.num_actors}"
            )
        return self

    @property
    def pool_limit(self) -> int:
        """The most inference actors this run may have at once."""
        return self.max_actors or self.num_actors


class LiveFeedConfig(Section):
    """writer.live_feed: one ZeroMQ endpoint per run answering indexamajig's requests
    (--zmq-request) with the newest hits, as MsgPack frames (writer/feed.py)."""

    enabled: bool = Field(False, description="Serve hits to indexamajig --zmq-input.")
    bind: str = Field(
        "tcp://127.0.0.1:5556",
        min_length=1,
        description="ZeroMQ address the feed binds (loopback unless set otherwise; on "
        "Kubernetes reach it with kubectl port-forward to the driver's pod).",
    )
    buffer: int = Field(
        16,
        ge=1,
        description="Newest hits kept for the next requests; older ones are skipped (counted), "
        "never waited for. The CXI files keep every hit.",
    )


class WriterConfig(Section):
    num_actors: int = Field(1, ge=1, description="Writer actors; each owns its own files.")
    num_cpus_per_actor: float = Field(1.0, gt=0, description="Ray CPUs reserved per writer.")
    output_dir: str = Field(
        "runs/{run_id}", description="Directory of the CXI files and summary; {run_id} expands."
    )
    file_prefix: str = Field("peaknet", description="CXI file names start with this.")
    events_per_file: int = Field(1000, ge=1, description="Rotate to a new file after this many.")
    images: Literal["hits", "all", "none"] = Field(
        "hits",
        description="Frames written to /entry_1/data_1/data: hits only, every event (rows for "
        "non-hits too), or none (peak lists of hits only).",
    )
    compression: Literal["none", "gzip", "lzf", "bitshuffle_lz4", "zstd"] = Field(
        "bitshuffle_lz4",
        description="Compression of written frames (lossless). bitshuffle_lz4 costs no "
        "throughput and makes files ~6x smaller; it and zstd need the HDF5 filter plugins on "
        "the reader's side: h5py readers `import hdf5plugin`, CrystFEL needs HDF5_PLUGIN_PATH "
        "set to hdf5plugin's plugin directory. gzip is built into every HDF5; lzf is h5py-only "
        "(CrystFEL cannot read it).",
    )
    compression_level: int | None = Field(None, ge=0, description="Level for gzip/zstd.")
    min_peaks: int = Field(10, ge=0, description="An event is a hit with at least this many peaks.")
    max_peaks: int = Field(
        2048, ge=1, description="Peaks kept per event (MAXP); extra are counted."
    )
    min_pixels_per_peak: int = Field(1, ge=1, description="Smaller components are not peaks.")
    max_pixels_per_peak: int = Field(1000, ge=1, description="Larger components are not peaks.")
    connectivity: Literal[4, 8] = Field(8, description="Pixel connectivity of a peak.")
    max_pending_batches: int = Field(
        4, ge=1, description="Results fetched ahead of peak finding (bounds memory)."
    )
    max_uncommitted_bytes: int = Field(
        256 * 2**20,
        ge=1,
        description="A writer keeps the Results it wrote under leases until a closed file "
        "commits them (so a writer that dies loses nothing); their frames stay in the object "
        "store until then. Past this many bytes it closes its file early (smaller files).",
    )
    daq_run_close_s: float = Field(
        3.0,
        gt=0,
        description="Under runtime.service each DAQ run is written to its own folder; a writer "
        "closes that run's files (and writes its part of the run's summary) once no event of "
        "it has reached the writer for this long, or at the end of the stream.",
    )
    geometry: GeometryConfig = Field(
        default_factory=GeometryConfig,
        description="Detector geometry for CrystFEL: written as <file_prefix>.geom next to "
        "the CXI files (camera length and pixel size are also stored in each file).",
    )
    live_feed: LiveFeedConfig = Field(
        default_factory=lambda: LiveFeedConfig(),
        description="Serve hits live to CrystFEL's indexamajig over ZeroMQ (off by default).",
    )

    @model_validator(mode="after")
    def _pixel_range(self) -> WriterConfig:
        if self.max_pixels_per_peak < self.min_pixels_per_peak:
            raise ValueError("max_pixels_per_peak must be >= min_pixels_per_peak")
        return self

    @model_validator(mode="after")
    def _level_fits_compression(self) -> WriterConfig:
        level = self.compression_level
        if level is None:
            return self
        if self.compression not in COMPRESSION_LEVELS:
            raise ValueError(
                f"compression_level applies to {sorted(COMPRESSION_LEVELS)} only, "
                f"not compression={self.compression!r}"
            )
        low, high = COMPRESSION_LEVELS[self.compression]
        if not low <= level <= high:
            raise ValueError(f"compression_level for {self.compression} must be {low}..{high}")
        return self


class LivePageConfig(Section):
    """monitor.live_page: the page the driver serves while the run streams
    (monitor/live_server.py; its JSON endpoints are in the README)."""

    enabled: bool | None = Field(
        None,
        description="Serve the live page. null: on for runs that last (runtime.service, a "
        "socket source, an endless random source, or one whose num_frames / rate_hz exceeds "
        "30 s), off otherwise.",
    )
    bind: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the page binds: loopback unless set otherwise (on Kubernetes the "
        "operator sets 0.0.0.0; reach it with kubectl port-forward).",
    )
    port: int = Field(8642, ge=0, le=65535, description="TCP port; 0 takes any free port.")


class MonitorConfig(Section):
    progress_interval_s: float = Field(2.0, gt=0, description="Seconds between progress lines.")
    console: bool = Field(
        True,
        description="Show progress on the console: a live display on a terminal, plain lines "
        "otherwise.",
    )
    report_json: bool = Field(True, description="Write report.json into the output directory.")
    metrics: bool = Field(
        True,
        description="Export Ray metrics (Prometheus names peaknet_*, shown as ray_peaknet_*) "
        "from every stage actor, queue shard and the driver, updated once a second.",
    )
    report_html: bool = Field(
        True,
        description="Write report.html (the verdict and plots, self-contained) into the output "
        "directory; `peaknet-pipeline report RUN_DIR` draws it again later.",
    )
    live_page: LivePageConfig = Field(default_factory=LivePageConfig)


class RestartsConfig(Section):
    """How many times the driver replaces a failed actor of each role in one run."""

    ingest: int = Field(3, ge=0, description="Source actors started again (they resume).")
    inference: int = Field(3, ge=0, description="Inference actors replaced.")
    writer: int = Field(3, ge=0, description="Writer actors replaced (same file index).")
    backoff_s: float = Field(
        1.0, ge=0, description="Wait before the first restart of a role; doubles each time."
    )


class RuntimeConfig(Section):
    run_id: str | None = Field(
        None, description="Name of this run (queue and file names); null uses the start time."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the pipeline's own log lines (driver and actors)."
    )
    ray_logs: bool = Field(
        False,
        description="Also show Ray's own log lines and its (Class pid=...) prefixes on actor "
        "output (the CLI's -v); off, only the pipeline's lines are printed, in one format.",
    )
    startup_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Longest wait for every actor to be placed and ready (model loaded); "
        "a cluster that cannot place them fails the run instead of waiting forever.",
    )
    drain_timeout_s: float = Field(
        600.0, gt=0, description="Longest wait for the pipeline to drain once ingest has stopped."
    )
    max_run_time_s: float | None = Field(
        None, gt=0, description="Stop ingest and drain after this long; null runs to the end."
    )
    service: bool = Field(
        False,
        description="Run as a service through a beamtime: a socket source never ends on idle "
        "(start_timeout_s and idle_timeout_s are not applied), every event carries its DAQ run "
        "(source.socket.daq_run), and the run ends only when stopped (Ctrl-C, "
        "`peaknet-pipeline stop`, SIGTERM, deleting the resource). Finite sources (random, "
        "replay) still end with their data; each of their streams is one DAQ run.",
    )
    restarts: RestartsConfig = Field(
        default_factory=RestartsConfig,
        description="Actors that die are replaced: their leased records go to the others or "
        "to the replacement; a run that runs out of restarts drains what it can, exits 1.",
    )


class PipelineConfig(Section):
    """A whole pipeline run: the YAML file, `--set` overrides and the CRD's spec.pipeline."""

    ray: RayConfig = Field(default_factory=RayConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    queue: QueuesConfig = Field(default_factory=QueuesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    writer: WriterConfig = Field(default_factory=WriterConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    profile: ProfileConfig = Field(default_factory=ProfileConfig)

    @model_validator(mode="after")
    def _profiled_actor_exists(self) -> PipelineConfig:
        torch = self.profile.torch
        if torch is not None and torch.actor >= self.inference.pool_limit:
            raise ValueError(
                f"profile.torch.actor={torch.actor}: the run has inference actors "
                f"0..{self.inference.pool_limit - 1} (inference.num_actors / max_actors)"
            )
        return self

    @model_validator(mode="after")
    def _crystal_sees_the_detector(self) -> PipelineConfig:
        """The crystal source draws its spots on writer.geometry's detector (config/crystal.py)."""
        if self.source.random.crystal is not None:
            self.source.random.crystal.bind(self.writer.geometry)
        return self

    @model_validator(mode="after")
    def _panels_fit_the_frames(self) -> PipelineConfig:
        panels = self.writer.geometry.panels
        shape = self.inference.frame_shape
        if shape is None and self.source.kind == "random":
            shape = self.source.random.frame_shape
        if panels is not None and shape is not None and len(panels) != shape[0]:
            raise ValueError(
                f"writer.geometry.panels lists {len(panels)} panels, but frames of shape "
                f"{list(shape)} have {shape[0]} (one entry per C of (C, H, W))"
            )
        return self
