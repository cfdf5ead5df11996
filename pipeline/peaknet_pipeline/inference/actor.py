"""The inference actor: Q1 batches in, Q2 results out, with N-way buffering.

Two threads per actor. The prefetch thread (a `QueueConsumer`) takes records from Q1,
materialises their images with one batched `ray.get`, checks them and pads each into a free
staging slot (N slots,
`inference.buffer_depth`); while all slots are busy it can hold one more fetched batch per Q1
shard (a wait answered by several shards at once). The
compute loop (in `run`) issues staged slots to the device runner, finishes them, and puts one
Result per batch into Q2 through a QueueProducer whose Outbox this actor owns, so a Result's
output stays readable after the actor dies.

What the actor records about itself beyond its counters (metrics, per-batch times, NVML, a
torch trace) is in `observe.Observer`.

Exactness: a batch's record travels in its slot from staging to its Result, so metadata can
never slip to a neighbour; end of stream is the queue's EndOfStream token, handed over behind
the last staged slot, and
the compute loop finishes every in-flight slot before it closes the producer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import sys
import threading
import time
from typing import Any

from ..config.models import PipelineConfig
from ..logs import setup_logging
from ..queue import Outbox, PayloadOwner, QueueConsumer, QueueProducer, ShardedQueue
from ..records import ReadyInfo, Result
from ..stats import InferenceStats
from .checks import REASONS, check_batch, check_record

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a waiting prefetch thread looks at the stop flag
# batches_in, frames_in, bytes_in (taken from Q1), the same _out (put into Q2), rejected_frames
COUNTS = (*(f"{n}_{way}" for way in ("in", "out") for n in ("batches", "frames", "bytes")),)
COUNTS += ("rejected_frames",)
SECONDS = (
    "busy_s",  # compute loop: issuing and finishing batches
    "idle_s",  # compute loop: waiting for a staged batch (starvation shows here)
    "q2_blocked_s",  # compute loop: putting Results into Q2, and the final flush
    "q1_wait_s",  # prefetch: waiting on Q1
    "fetch_s",  # prefetch: materialising images (batched ray.get)
    "slot_wait_s",  # prefetch: waiting for a free staging slot (compute is the bottleneck)
    "stage_s",  # prefetch: padding into the staging buffer
    "warmup_s",
)


def inference_producer_id(index: int) -> str:
    """The Q2 producer id (and actor id) of inference actor `index`; unique per actor."""
    return f"inference-{index}"


def torch_threads(cfg: PipelineConfig) -> int:
    """Torch CPU threads: the configured count, else the CPUs Ray reserved for the actor."""
    return cfg.inference.torch_threads or max(1, int(cfg.inference.num_cpus_per_actor))


def warmup_batch_size(cfg: PipelineConfig) -> int:
    """The batch size to warm up with: the source's when it declares one, else 1."""
    source = cfg.source
    sized = {"random": source.random, "replay": source.replay}.get(source.kind)
    return sized.batch_size if sized is not None else 1


class InferenceActor(PayloadOwner):
    """Construct through `start_inference_actors` (Ray options, readiness, clear start errors).

    Needs max_concurrency >= 3: run() holds one thread while shards call take_payload and the
    driver calls stats() or stop().
    """

    def __init__(self, cfg: PipelineConfig, q1: ShardedQueue, q2: ShardedQueue, index: int):
        setup_logging(cfg.runtime.log_level)
        self.actor_id = inference_producer_id(index)
        self.index = index
        self.outbox = Outbox()
        self._init_error: BaseException | None = None
        try:
            # Actors spread over Q1's shards, and hold what they take under leases: a batch
            # is acknowledged once its Result is in Q2 (or it was rejected), so the batches of
            # an actor that dies go to the others.
            self._setup(cfg, q1.with_home(index).as_consumer(self.actor_id), q2, index)
        except Exception as exc:  # noqa: BLE001 - reported by ready() with its own type
            log.error("%s: could not start: %s", self.actor_id, exc)
            self._init_error = exc

    def _setup(self, cfg: PipelineConfig, q1: ShardedQueue, q2: ShardedQueue, index: int) -> None:
        threads = torch_threads(cfg)
        if "torch" not in sys.modules:
            # OpenMP sizes its pool when torch loads; set_num_threads alone left CPU inference
            # ~10% slower here when the environment said otherwise (Ray sets it to num_cpus).
            os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        from ..model import build_model
        from .engine import Engine
        from .geometry import geometry
        from .observe import Observer
        from .runners import make_runner

        inf = cfg.inference
        torch.set_num_threads(threads)
        self.cfg, self.q1 = cfg, q1
        self.engine = Engine.of_settings(
            build_model(cfg.model, warn_random=False),  # the driver says it, once per run
            _resolve_device(inf.device),
            inf,
        )
        self.runner = make_runner(self.engine, _peak_finder(cfg))
        self._nvtx = self.engine.device.type == "cuda"
        self._free: queue.Queue = queue.Queue()
        for i in range(inf.buffer_depth):
            self._free.put(self.runner.new_slot(i))
        self.consumer = QueueConsumer(
            q1,
            self._refs_of,
            bound=self._wanted,
            prepare=self._stage,
            poll_s=POLL_S,
            nvtx=self._nvtx,
            name=f"{self.actor_id}-prefetch",
        )
        self._abort = threading.Event()
        self._lock = threading.Lock()
        self._warm = False
        self._state = "ready"
        self._c: dict[str, Any] = {**dict.fromkeys(COUNTS, 0), **dict.fromkeys(SECONDS, 0.0)}
        self._rejected: dict[str, int] = {}
        self.observer = Observer(cfg, self.actor_id, index, self.engine.device)
        if inf.frame_shape is not None and inf.warmup_iters:
            shape = (warmup_batch_size(cfg), *inf.frame_shape)
            self._warmup(geometry(shape, inf.pad_mode))
        self.producer = QueueProducer(
            q2, self.actor_id, outbox=self.outbox, on_accepted=self._result_accepted
        )

    def __repr__(self) -> str:  # Ray shows it as the actor's name (`ray list actors`, dashboard)
        return self.actor_id

    # -- control ----------------------------------------------------------------------------
    def ready(self) -> ReadyInfo:
        """Raises the start-up error (missing weights, no CUDA, ...) with its own type; else
        says where the actor runs (the pool retires actors by node) and on which device."""
        if self._init_error is not None:
            raise self._init_error
        return ReadyInfo.here(self.actor_id, str(self.engine.device))

    def torch_trace(self) -> bytes | None:
        """The torch profiler trace (Chrome trace JSON) when this actor recorded one."""
        trace = self.observer.trace if self._init_error is None else None
        return trace.trace if trace is not None else None

    def stop(self) -> None:
        """Take no new batches; those already taken are finished, then run() returns."""
        if self._init_error is None:
            self.consumer.stop()

    def stats(self) -> InferenceStats:
        """Live counters for the progress display (cheap: a copy under a lock)."""
        if self._init_error is not None:
            return InferenceStats(
                self.actor_id, self.index, state="failed", error=str(self._init_error)
            )
        with self._lock:
            c = dict(self._c)
            rejected = dict(self._rejected)
        taken = self.consumer.counts()
        c.update(batches_in=taken["batches"], frames_in=taken["frames"], bytes_in=taken["bytes"])
        c.update(q1_wait_s=taken["wait_s"], fetch_s=taken["fetch_s"])
        pending = c["batches_in"] - c["batches_out"] - sum(rejected.values())
        return InferenceStats(
            self.actor_id,
            self.index,
            state=self._state,
            device=str(self.engine.device),
            **c,
            rejected=rejected,
            in_actor_batches=pending,
            staged_batches=self.consumer.qsize(),
            gpu=self.observer.gpu_stats(self.runner.timeline),  # None on the CPU
        )

    # -- the compute loop -------------------------------------------------------------------
    def run(self) -> InferenceStats:
        """Process Q1 until end of stream or stop(); close the Q2 producer; return a summary."""
        self.ready()
        if self._state != "ready":
            raise RuntimeError(f"{self.actor_id}: run() was already called")
        self._state = "running"
        t_start = time.perf_counter()
        from .runners import pump

        self.consumer.start()
        self.observer.start(self.stats, self.q1.name)
        try:
            pump(self.consumer, self.runner.max_in_flight, self._issue, self._finish, self._idle)
        except BaseException:
            self._abort.set()  # the prefetch thread must not wait for slots that never free
            self._shutdown(quietly=True)
            self.observer.close()
            raise
        self.observer.stop_trace()
        self._shutdown()
        self.observer.close()
        fatal = self.consumer.end.error if self.consumer.end is not None else None
        if fatal is not None:
            raise RuntimeError(f"{self.actor_id}: prefetch failed: {fatal}") from fatal
        return dataclasses.replace(self.stats(), wall_s=time.perf_counter() - t_start)

    def _shutdown(self, quietly: bool = False) -> None:
        """Stop the prefetch thread, then flush and close the Q2 producer (end of stream)."""
        self.consumer.stop()
        self.consumer.join()
        self._state = "closing"
        t0 = time.perf_counter()
        try:
            self.producer.close()
            self.q1.flush_acks()
        except Exception as exc:
            if not quietly:
                raise
            log.error("%s: closing the Q2 producer failed: %s", self.actor_id, exc)
        finally:
            self._add("q2_blocked_s", time.perf_counter() - t0)
            self._state = "done"

    def _issue(self, slot) -> bool:
        if not self._warm and self.cfg.inference.warmup_iters:
            self._warmup(slot.geo)
        t0 = time.perf_counter()
        slot.times["issue"] = t0
        try:
            with self.observer.issuing(f"{slot.record.source_id}#{slot.record.seq}"):
                self.runner.issue(slot)
            return True
        except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the actor
            self._reject("inference", f"{_where(slot.record)}: {exc}", slot.record)
            self._release(slot)
            return False
        finally:
            self._add("busy_s", time.perf_counter() - t0)

    def _finish(self, slot) -> None:
        t0 = time.perf_counter()
        try:
            out = self.runner.finish(slot)
        except Exception as exc:  # noqa: BLE001
            self._reject("inference", f"{_where(slot.record)}: {exc}", slot.record)
            self._release(slot)
            return
        record, times = slot.record, slot.times
        self._release(slot)
        t1 = time.perf_counter()
        self._add("busy_s", t1 - t0)
        peaks = out if self.runner.peaks is not None else None  # a BatchPeaks, in the record
        result = Result(
            batch=record,
            output_kind="peaks" if peaks is not None else self.engine.output,
            output_shape=(0,) if peaks is not None else tuple(out.shape),
            output_dtype="|u1" if peaks is not None else out.dtype.str,
            actor_id=self.actor_id,
            peaks=peaks,
            timings_s={  # taken from Q1 -> staged (incl. waiting for a slot) -> issued -> done
                "taken_to_staged_s": times["staged"] - times["taken"],
                "staged_to_issued_s": times["issue"] - times["staged"],
                "compute_s": t1 - times["issue"],
                "in_actor_s": t1 - times["taken"],
            },
        )
        self.observer.finished(t1 - times["issue"])
        with _nvtx("put", self._nvtx):
            self.producer.put(result, payload=None if peaks is not None else out)
        self._add("q2_blocked_s", time.perf_counter() - t1)
        with self._lock:
            self._c["batches_out"] += 1
            self._c["frames_out"] += record.size
            self._c["bytes_out"] += out.nbytes

    def _idle(self, seconds: float) -> None:
        self._add("idle_s", seconds)

    def _warmup(self, geo) -> None:
        t0 = time.perf_counter()
        self.engine.warmup(geo, self.cfg.inference.warmup_iters)
        self._warm = True
        self._add("warmup_s", time.perf_counter() - t0)

    def _release(self, slot) -> None:
        slot.clear()
        self._free.put(slot)

    # -- the prefetch thread (QueueConsumer's hooks) -----------------------------------------
    def _wanted(self) -> int:
        """Records to ask Q1 for: the free slots, split over the shards (a wait that several
        shards answer brings that many from each), at least one. So an actor holds at most
        buffer_depth + Q1 shards batches: the bound peaknet_pipeline.budget counts."""
        return max(1, self._free.qsize() // self.q1.num_shards)

    def _refs_of(self, record: Any) -> tuple | None:
        """The images to fetch; None for a record that fails its checks (rejected here)."""
        problem = check_record(record)
        if problem:
            self._reject(*problem, record)
            return None
        return (record.images,)

    def _stage(self, record: Any, got: Any, taken: float) -> Any:
        """The record padded into a free slot (waiting for one), or None if rejected."""
        if got is None:
            return None  # already rejected by _refs_of
        if isinstance(got, BaseException):
            self._reject("payload", f"{_where(record)}: {got}", record)
            return None
        from .geometry import geometry

        images = got[0]
        inf = self.cfg.inference
        problem = check_batch(record, images, inf.frame_shape, inf.pad_mode)
        if problem:
            self._reject(*problem, record)
            return None
        geo = geometry(images.shape, inf.pad_mode)
        t0 = time.perf_counter()
        slot = self._take_slot()
        t1 = time.perf_counter()
        if slot is None:
            self._reject("aborted", f"{_where(record)}: the compute loop failed first", record)
            return None
        with _nvtx("stage", self._nvtx):
            slot.stage(images, geo)
        slot.record = record
        slot.images = images  # peaks on the device read the frames' own values
        slot.times.update(taken=taken, staged=time.perf_counter())
        self._add("slot_wait_s", t1 - t0)
        self._add("stage_s", time.perf_counter() - t1)
        return slot

    def _take_slot(self):
        """A free staging slot (blocks while all N are busy); None once the run aborted."""
        while not self._abort.is_set():
            try:
                return self._free.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return None

    # -- accounting -------------------------------------------------------------------------
    def _add(self, key: str, seconds: float) -> None:
        with self._lock:
            self._c[key] += seconds

    def _result_accepted(self, result: Result) -> None:
        """Q2 owns the Result now: the batch it was made from is done."""
        self.q1.ack([result.batch])

    def _reject(self, reason: str, detail: str, record: Any) -> None:
        with self._lock:
            first = reason not in self._rejected
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
            self._c["rejected_frames"] += getattr(record, "size", 0)
        self.q1.ack([record])  # counted as rejected: done with it (it would fail again)
        if first:
            log.warning(
                "%s: rejected a batch (%s: %s): %s; further batches rejected for this reason "
                "are counted, not logged",
                self.actor_id,
                reason,
                REASONS[reason],
                detail,
            )


def _where(record: Any) -> str:
    return f"batch {getattr(record, 'source_id', '?')}#{getattr(record, 'seq', '?')}"


def _nvtx(name: str, enabled: bool):
    from ..nvtx import nvtx_range

    return nvtx_range(name, enabled)


def _peak_finder(cfg: PipelineConfig) -> Any:
    """inference.peaks_on_device (with output mask): the runner's reduction of a batch's mask
    to peak lists under the writer's rules; else None (the mask goes to Q2)."""
    if not cfg.inference.peaks_on_device or cfg.inference.output != "mask":
        return None
    import functools

    from ..writer.peaks import peak_rules
    from .peaks import find_batch_peaks

    return functools.partial(find_batch_peaks, **peak_rules(cfg.writer))


def _resolve_device(setting: str) -> str:
    """cuda when asked for or when Ray gave this actor a GPU (auto), else cpu."""
    import ray
    import torch

    if setting == "cpu":
        return "cpu"
    has_cuda = torch.cuda.is_available()
    if setting == "cuda" and not has_cuda:
        raise RuntimeError("inference.device is cuda but this actor sees no CUDA device")
    return "cuda" if has_cuda and (setting == "cuda" or ray.get_gpu_ids()) else "cpu"
