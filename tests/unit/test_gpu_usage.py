"""GPU use in the report (issue 22, item 5), on the CPU path: a fake NVML reader stands in for
the GPU, synthetic compute intervals for the runner's CUDA events, and synthetic samples for a
run's time series. What only a GPU shows (NVML's own numbers, the CUDA events' clock) is not
tested here: bench/gpu_check.py and a run on a GPU machine show it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.inference.observe import Observer
from peaknet_pipeline.inference.runners import CpuRunner
from peaknet_pipeline.monitor.gpu import GpuProbe
from peaknet_pipeline.monitor.gpu_usage import (
    IDLE_GAP_MIN_S,
    Timeline,
    UsageTally,
    diagnosis,
    gpu_rows,
    gpu_section,
    gpu_stats,
    idle_gaps,
    q1_correlation,
    window_busy,
)

GIB = 1 << 30


class FakeNvml:
    """A GpuReader (monitor/gpu.py) that answers from a list, as NVML would on a GPU."""

    def __init__(self, readings: list[tuple[float, int, int]]) -> None:
        self.readings = list(readings)
        self.calls = 0

    def read(self) -> tuple[float, int, int]:
        self.calls += 1
        return self.readings.pop(0)


class BrokenNvml:
    def read(self) -> tuple[float, int, int]:
        raise RuntimeError("NVMLError_GpuIsLost")


# -- readings -------------------------------------------------------------------------------
def test_a_tally_keeps_the_runs_mean_and_peaks_and_the_newest_reading():
    tally = UsageTally()
    for reading in [
        (0.9, 10 * GIB, 80 * GIB),
        (0.5, 30 * GIB, 80 * GIB),
        (0.7, 20 * GIB, 80 * GIB),
    ]:
        tally.add(reading)
    d = tally.as_dict()
    assert d["util_mean"] == pytest.approx(0.7) and d["util_peak"] == 0.9
    assert d["memory_peak_bytes"] == 30 * GIB and d["memory_total_bytes"] == 80 * GIB
    assert (d["util"], d["memory_used_bytes"], d["readings"]) == (0.7, 20 * GIB, 3)


def test_without_readings_every_figure_is_none_not_zero():
    d = gpu_stats(None, None)
    assert all(v is None for v in d.values()), d


def test_the_metrics_probe_reads_the_same_reader():
    probe = GpuProbe(FakeNvml([(0.92, 5, 10)]), "0")
    assert [(r.name, r.value) for r in probe.readings()] == [
        ("peaknet_gpu_utilization_ratio", 0.92),
        ("peaknet_gpu_memory_used_bytes", 5),
        ("peaknet_gpu_memory_total_bytes", 10),
    ]


# -- idle gaps ------------------------------------------------------------------------------
def test_idle_gaps_are_the_times_between_one_batchs_end_and_the_next_ones_start():
    # Busy 10 ms each; gaps of 0.2 ms (launch: not counted), 5 ms and 30 ms.
    intervals = [(0.000, 0.010), (0.0102, 0.0202), (0.0252, 0.0352), (0.0652, 0.0752)]
    t = idle_gaps(intervals).as_dict()
    assert t["batches_timed"] == 4 and t["idle_gaps"] == 2
    assert t["longest_idle_gap_s"] == pytest.approx(0.030)
    assert t["idle_s"] == pytest.approx(0.0352, abs=1e-4)  # every gap's time, short ones too
    assert t["device_busy_s"] == pytest.approx(0.040)
    assert t["device_busy"] == pytest.approx(0.040 / 0.0752, abs=1e-3)


def test_back_to_back_batches_have_no_gap_and_the_first_has_none_before_it():
    t = idle_gaps([(1.0, 2.0), (2.0, 3.0), (3.0 + IDLE_GAP_MIN_S / 2, 4.0)]).as_dict()
    assert t["idle_gaps"] == 0 and t["longest_idle_gap_s"] is None
    assert t["device_busy"] == pytest.approx(1.0, abs=1e-3)


def test_event_gaps_add_like_host_intervals():
    # The CUDA runner adds (busy, gap) measured between events; the same figures result.
    events = Timeline()
    for busy, gap in [(0.01, None), (0.01, 0.0002), (0.01, 0.005), (0.01, 0.03)]:
        events.add(busy, gap)
    hosts = idle_gaps([(0.0, 0.01), (0.0102, 0.0202), (0.0252, 0.0352), (0.0652, 0.0752)])
    assert events.as_dict() == pytest.approx(hosts.as_dict())


def test_the_cpu_runner_times_each_batchs_compute_on_the_host_clock():
    # a compute long enough to show on the host clock after rounding (microseconds)
    engine = SimpleNamespace(compute=lambda x, geo: torch.ones(200_000).cumsum(0) + x.sum())
    runner = CpuRunner(engine)
    for _ in range(3):
        runner.issue(SimpleNamespace(host_input=lambda: torch.zeros(4), geo=None, output=None))
    t = runner.timeline.as_dict()
    assert t["batches_timed"] == 3 and t["device_busy_s"] > 0 and t["idle_s"] >= 0


class FakeEvent:
    """A CUDA timing event recorded at `t` seconds; elapsed_time in ms, as torch's."""

    def __init__(self, t: float) -> None:
        self.t = t

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, later: FakeEvent) -> float:
        return (later.t - self.t) * 1e3


def test_the_cuda_runner_takes_busy_time_and_gaps_from_its_events():
    from peaknet_pipeline.inference.runners import CudaRunner

    runner = object.__new__(CudaRunner)  # its streams need a GPU; _time needs only events
    runner.timeline, runner._last_end = Timeline(), None
    for start, end in [(0.0, 0.010), (0.0102, 0.0202), (0.0252, 0.0352), (0.0652, 0.0752)]:
        runner._time(FakeEvent(start), FakeEvent(end))
    hosts = idle_gaps([(0.0, 0.01), (0.0102, 0.0202), (0.0252, 0.0352), (0.0652, 0.0752)])
    assert runner.timeline.as_dict() == pytest.approx(hosts.as_dict())


# -- the observer: what the inference actor's stats carry -----------------------------------
def _observer(reader=None, device: str = "cpu") -> Observer:
    return Observer(PipelineConfig(), "inference-0", 0, torch.device(device), reader=reader)


def test_on_the_cpu_without_a_reader_the_stats_say_nothing_about_a_gpu():
    assert _observer().gpu_stats(idle_gaps([(0.0, 1.0)])) is None


def test_each_stats_call_reads_the_gpu_once_and_the_tally_grows():
    fake = FakeNvml([(0.2, 1 * GIB, 80 * GIB), (0.92, 3 * GIB, 80 * GIB)])
    observer = _observer(fake)
    observer.gpu_stats(None)
    gpu = observer.gpu_stats(idle_gaps([(0.0, 0.01), (0.05, 0.06)]))
    assert fake.calls == 2
    assert gpu["util"] == 0.92 and gpu["util_peak"] == 0.92 and gpu["readings"] == 2
    assert gpu["util_mean"] == pytest.approx(0.56) and gpu["memory_peak_bytes"] == 3 * GIB
    assert gpu["idle_gaps"] == 1 and gpu["longest_idle_gap_s"] == pytest.approx(0.04)


def test_a_failing_reader_is_said_once_and_the_figures_read_so_far_stay(caplog):
    fake = FakeNvml([(0.5, GIB, 2 * GIB)])
    observer = _observer(fake)
    observer.gpu_stats(None)
    observer.reader = BrokenNvml()
    with caplog.at_level(logging.WARNING):
        first, second = observer.gpu_stats(None), observer.gpu_stats(None)
    assert "GPU reading failed" in caplog.text and caplog.text.count("GPU reading failed") == 1
    assert first["util_mean"] == second["util_mean"] == 0.5 and second["readings"] == 1


# -- utilisation against Q1's depth ---------------------------------------------------------
def _samples(pairs: list[tuple[float | None, int]], actor: str = "inference-0") -> list:
    """One sample per (utilisation, Q1 depth): the shape of monitor.timeseries.Sample."""
    return [
        SimpleNamespace(
            actors={actor: {"role": "inference", "gpu": {"util": u} if u is not None else None}},
            queues={"Q1": {"depth": d}},
        )
        for u, d in pairs
    ]


def test_busy_while_q1_held_batches_is_a_saturated_gpu():
    c = q1_correlation(_samples([(0.95, 8), (0.9, 7), (0.92, 9), (0.3, 0)]), "inference-0")
    assert (c["samples_q1_held"], c["samples_q1_empty"]) == (3, 1)
    assert c["util_q1_held"] == pytest.approx(0.9233, abs=1e-4) and c["util_q1_empty"] == 0.3
    assert c["util_q1_depth_r"] > 0.9
    assert diagnosis(c).startswith("saturated: GPU 92% busy while Q1 held batches")


def test_idle_while_q1_was_empty_is_a_starved_gpu():
    c = q1_correlation(_samples([(0.1, 0), (0.15, 0), (0.2, 0), (0.6, 1)]), "inference-0")
    assert diagnosis(c).startswith("starved: Q1 was empty in 3 of 4 samples and the GPU 15% busy")


def test_idle_although_q1_held_batches_blames_the_host_side_of_inference():
    c = q1_correlation(_samples([(0.2, 6), (0.3, 6), (0.25, 6)]), "inference-0")
    assert c["util_q1_depth_r"] is None  # Q1's depth did not vary: no coefficient
    assert diagnosis(c).startswith("underfed: GPU only 25% busy while Q1 held batches")


def test_samples_without_a_reading_are_left_out_and_none_at_all_says_nothing():
    c = q1_correlation(_samples([(None, 3), (None, 0)]), "inference-0")
    assert c["samples"] == 0 and c["util_q1_held"] is None and diagnosis(c) is None


def test_the_reports_gpu_section_is_per_inference_actor_and_none_on_the_cpu():
    samples = _samples([(0.95, 8), (0.9, 7)])
    final = {"gpu": {"util": 0.9, "memory_used_bytes": GIB, "util_mean": 0.93, "idle_gaps": 2}}
    section = gpu_section(samples, {"inference-0": final, "inference-1": {"gpu": None}})
    assert list(section) == ["inference-0"]
    entry = section["inference-0"]
    assert entry["util_mean"] == 0.93 and entry["idle_gaps"] == 2
    assert "util" not in entry and "memory_used_bytes" not in entry  # a moment, not the run
    assert entry["vs_q1"]["util_q1_held"] == pytest.approx(0.925)
    assert entry["reading"].startswith("saturated")
    assert gpu_section(samples, {"inference-0": {"gpu": None, "device": "cpu"}}) is None


def test_the_windows_gpu_busy_averages_every_reading_after_the_first_sample():
    samples = _samples([(0.0, 0), (0.9, 4), (0.94, 4)])
    assert window_busy(samples) == pytest.approx(0.92)
    assert window_busy(_samples([(None, 0), (None, 4)])) is None


def test_the_pages_rows_say_busy_memory_q1_and_gaps_in_words():
    entry = {
        "util_mean": 0.92, "util_peak": 1.0, "memory_peak_bytes": 12_300_000_000,
        "memory_total_bytes": 80_000_000_000, "batches_timed": 500, "idle_gaps": 3,
        "idle_gap_min_s": 0.001, "longest_idle_gap_s": 0.045, "device_busy": 0.97,
        "vs_q1": {"util_q1_held": 0.95, "util_q1_empty": 0.1},
        "reading": "saturated: GPU 95% busy while Q1 held batches",
    }  # fmt: skip
    [(actor, text)] = gpu_rows({"inference-0": entry})
    assert actor == "inference-0"
    assert text.startswith("GPU 92% busy on average (peak 100%); memory peak 12.3 of 80.0 GB")
    assert "busy 95% while Q1 held batches, 10% while empty" in text
    assert "3 idle gaps of at least 1 ms between 500 batches, the longest 45.0 ms" in text
    assert "device busy 97%" in text and text.endswith(
        "saturated: GPU 95% busy while Q1 held batches"
    )


# -- the verdict's evidence -----------------------------------------------------------------
FED = {"frames_out": 40, "busy_s": 0.95, "q2_blocked_s": 0.0}
FAST_INGEST = {"frames_out": 40, "source_s": 0.3, "receive_s": 0.0, "put_s": 0.7}


def _judged(util: float | None, device: str, q1: int = 4):
    from helpers import timeline
    from peaknet_pipeline.monitor.verdict import verdict

    samples = timeline(ingest=FAST_INGEST, inference=FED, writer={"frames_out": 40}, q1=q1)
    for sample in samples:
        sample.actors["inference-0"]["device"] = device
        sample.actors["inference-0"]["gpu"] = {"util": util} if util is not None else None
    return verdict(samples)


def test_on_a_gpu_the_verdict_says_how_busy_nvml_saw_it():
    judged = _judged(0.92, "cuda:0")
    assert judged.word == "ok"
    assert "inference busy 95% on cuda:0 (GPU 92% busy)" in judged.sentence
    assert judged.evidence["gpu_busy"] == 0.92


def test_on_the_cpu_the_verdict_says_nothing_about_a_gpu():
    judged = _judged(None, "cpu")
    assert "GPU" not in judged.sentence and judged.evidence["gpu_busy"] is None


# -- report.html ----------------------------------------------------------------------------
def _page(gpu: dict | None, tmp_path) -> str:
    from peaknet_pipeline.monitor import TimeSeries
    from peaknet_pipeline.monitor.page import render

    cfg = PipelineConfig.model_validate({"writer": {"images": "none"}})
    acc = {"frames_ingested": 8, "frames_inferred": 8, "frames_rejected_by_inference": 0}
    acc |= {"events_written": 8, "hits": 0, "accounted": True}
    report = {
        "run_id": "gpu", "started": "2026-01-01T00:00:00+0000", "elapsed_s": 2.0,
        "streaming_s": 1.0, "ended_by": "end of stream", "exit_code": 0, "verdict": None,
        "accounting": acc, "errors": [], "ingest": [{}], "inference": [{}], "writer": [{}],
        "output_dir": "/nowhere", "config": cfg.model_dump(mode="json"), "gpu": gpu,
    }  # fmt: skip
    return render(report, {"files": []}, TimeSeries(), tmp_path)


def test_report_html_has_a_gpu_section_on_a_gpu_only(tmp_path):
    entry = {"util_mean": 0.92, "util_peak": 0.99, "reading": "saturated: GPU 93% busy"}
    html = _page({"inference-0": entry}, tmp_path)
    assert '<section id="gpu">' in html and "GPU 92% busy on average (peak 99%)" in html
    assert '<section id="gpu">' not in _page(None, tmp_path)
