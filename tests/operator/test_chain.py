"""The whole chain on one machine: the real operator (kopf) against the API emulator, the
KubeRay stand-in (kuberay_standin.py) turning its RayCluster into a local multi-node Ray and
its RayJob into the real driver (`peaknet-pipeline run` as a subprocess), which publishes
`status.driver` and reads the desired inference count from its resource.

Random source and the threshold model (exact, fast peaks) on small frames; every check reads
the CXI files the writers produced. One local Ray head serves the whole module; each test
adds and removes its worker nodes through the stand-in.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import pytest
from kuberay_standin import KubeRayStandIn, local_cluster

from conftest import example
from peaknet_pipeline.config import RandomSourceConfig
from peaknet_pipeline.evaluate import EVENT_IDS, generated_event_ids, recovery

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def ray_cluster():
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture
def kuberay(emulator, namespace, ray_cluster, tmp_path):
    standin = KubeRayStandIn(emulator.url, namespace, ray_cluster, tmp_path / "kuberay")
    (tmp_path / "kuberay").mkdir()
    yield standin
    standin.stop()


def manifest(output: Path, frames: int, rate_hz: float, **inference: Any) -> dict:
    """A small pipeline: 64x64 frames, threshold model, every event written (images: all)."""
    doc = example()
    doc["spec"]["pipeline"] = {
        "source": {
            "kind": "random",
            "random": {
                "frame_shape": [1, 64, 64],
                "batch_size": 4,
                "num_frames": frames,
                "rate_hz": rate_hz,
                "peaks_per_frame": 4,
            },
        },
        "queue": {"q1": {"capacity_items": 8}, "q2": {"capacity_items": 8}},
        "model": {"kind": "threshold"},
        "inference": {"device": "cpu", "frame_shape": [1, 64, 64]},
        "writer": {
            "output_dir": "runs/{run_id}",
            "images": "all",
            "compression": "none",
            "events_per_file": 64,
        },
        "monitor": {"progress_interval_s": 0.5, "console": True},
    }
    cluster = doc["spec"]["cluster"]
    cluster["output"]["mountPath"] = str(output)
    cluster["inference"].update(inference)
    return doc


def status(kubectl) -> dict:
    return kubectl.get("demo").get("status") or {}


def phase_is(kubectl, phase: str):
    return lambda: status(kubectl).get("phase") == phase


def cxi_files(output: Path) -> list[Path]:
    """The runs' CXI files (not again through the `latest` symlink)."""
    runs = [d for d in (output / "runs").iterdir() if not d.is_symlink()]
    return sorted(path for run in runs for path in run.glob("*.cxi"))


def written_events(output: Path) -> list[int]:
    import h5py

    events = []
    for path in cxi_files(output):
        with h5py.File(path, "r") as f:
            events += [int(e) for e in f[EVENT_IDS][:]]
    return events


def assert_every_event_once(output: Path, source: dict, frames: int) -> None:
    events = written_events(output)
    twice = [e for e, n in collections.Counter(events).items() if n > 1]
    assert twice == [], f"events written more than once: {twice[:10]}"
    expected = generated_event_ids(RandomSourceConfig.model_validate(source), {0: frames})
    assert sorted(events) == expected, f"missing: {sorted(set(expected) - set(events))[:10]}"


def test_a_resource_runs_to_succeeded_with_every_event_written_once(
    operator, kuberay, kubectl, tmp_path
):
    started = time.monotonic()
    operator()
    doc = manifest(tmp_path / "data", frames=96, rate_hz=24.0)
    kubectl.apply(doc)
    kuberay.wait(phase_is(kubectl, "Running"), "phase Running", 90)
    running_at = time.monotonic()
    kuberay.wait(phase_is(kubectl, "Succeeded"), "phase Succeeded", 90)
    driver = status(kubectl)["driver"]
    assert driver["framesIngested"] == driver["framesWritten"] == 96
    assert driver["framesLost"] == 0 and driver["exitCode"] == 0
    conditions = {c["type"]: c for c in status(kubectl)["conditions"]}
    assert conditions["FramesAccounted"]["status"] == "True"
    job = kubectl.child("ray.io/v1", "RayJob", "demo-driver")
    assert job["status"]["jobStatus"] == "SUCCEEDED"
    source = doc["spec"]["pipeline"]["source"]["random"]
    assert_every_event_once(tmp_path / "data", source, 96)
    found = recovery(
        cxi_files(tmp_path / "data"), RandomSourceConfig.model_validate(source), range(96)
    )
    assert found["recovered"] == found["injected"] and found["spurious"] == 0, found
    assert kuberay.deleted == []
    print(
        f"chain: Running after {running_at - started:.1f} s, "
        f"done after {time.monotonic() - started:.1f} s"
    )
