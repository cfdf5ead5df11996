"""The whole chain on one machine: the real operator (kopf) against the API emulator, the
KubeRay stand-in (kuberay_standin.py) turning its RayCluster into a local multi-node Ray and
its RayJob into the real driver (`peaknet-pipeline run` as a subprocess), which publishes
`status.driver` and reads the desired inference count from its resource.

Random source and the threshold model (exact, fast peaks) on small frames; every check reads
the CXI files the writers produced. The streams are endless and are stopped with
`peaknet-pipeline stop RUN` (what a user would run in the head pod) once the scaling checks are
done, so a run streams only as long as the test needs, however slow the machine is. One local
Ray head serves the whole module; each test adds and removes its worker nodes through the
stand-in. `kubectl scale` is played by patching spec.cluster.inference.replicas. The live page
is reached as from a laptop through the head pod's named port.
"""

from __future__ import annotations

import collections
import json
import re
import select
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kuberay_standin import KubeRayStandIn, local_cluster

from conftest import example
from peaknet_pipeline.config import RandomSourceConfig
from peaknet_pipeline.evaluate import EVENT_IDS, generated_event_ids, recovery
from peaknet_pipeline.service import DIED, STATE_FILE

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
        # One shard each: fewer processes to start on a busy machine.
        "queue": {
            "q1": {"capacity_items": 8, "num_shards": 1},
            "q2": {"capacity_items": 8, "num_shards": 1},
        },
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


def ray_command(cluster, *args: str, background: bool = False) -> Any:
    """A command run against the local cluster (never from this process: it may already hold
    the session's Ray)."""
    here = str(Path(__file__).parent)
    if args[0] == "kill-retiring":
        argv = [sys.executable, f"{here}/kill_retiring.py", *args[1:], cluster.address, "peaknet"]
    else:
        argv = [sys.executable, "-m", "peaknet_pipeline.cli", *args]
        argv += ["--address", cluster.address, "--namespace", "peaknet"]
    if background:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def inference_pods(kuberay) -> set[str]:
    return {pod for pod in kuberay.nodes if "-inference-worker-" in pod}


def pool(kubectl) -> dict:
    return (status(kubectl).get("driver") or {}).get("inference") or {}


def scale(kubectl, replicas: int) -> None:
    """What `kubectl scale pnp/demo --replicas=N` does through the scale subresource (which
    the emulator lacks): set spec.cluster.inference.replicas."""
    kubectl.patch("demo", {"spec": {"cluster": {"inference": {"replicas": replicas}}}})


def released_by_driver(kuberay) -> list[str]:
    """Pods the driver's log says it released (pool.py: "pod NAME released")."""
    return re.findall(r"inference pool: pod (\S+) released", kuberay.driver_log("demo-driver"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_live_page_through_the_head_port(kuberay, kubectl, port: int, run_id: str) -> None:
    """status.livePage names KubeRay's head Service and the port; the head pod declares it,
    named `live-page`; the page answers on the pod's address at that port (what `kubectl
    port-forward pod/<head> PORT` reaches), for this run."""
    address = f"http://demo-head-svc.{kubectl.ns}.svc:{port}/"
    kuberay.wait(lambda: status(kubectl).get("livePage") == address, "status.livePage", 30)
    pods = kubectl.client.get(
        f"/api/v1/namespaces/{kubectl.ns}/pods?labelSelector=ray.io/node-type=head"
    )
    (head,) = pods["items"]
    ports = {p["name"]: p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}
    assert ports["live-page"] == port
    url = f"http://{head['status']['podIP']}:{ports['live-page']}/api/summary"
    with urllib.request.urlopen(url, timeout=10) as answer:
        summary = json.loads(answer.read())
    assert summary["run_id"] == run_id


def timeline(kuberay, started: float) -> str:
    return "; ".join(f"{t - started:.1f} s {what}" for t, what in kuberay.timeline)


def test_run_to_succeeded_scaling_inference_1_2_1_with_every_event_written_once(
    operator, kuberay, kubectl, ray_cluster, tmp_path
):
    """Apply, Running, scale 1 -> 2 -> 1 while frames stream, stop, Succeeded: the pool
    follows the spec, the pod deleted is exactly the one the driver released, and every
    event is in the CXI files once."""
    started = time.monotonic()
    operator()
    doc = manifest(tmp_path / "data", frames=0, rate_hz=40.0, maxReplicas=2)
    doc["spec"]["pipeline"]["runtime"] = {"run_id": "chain-scale"}
    page_port = free_port()  # the live page (on by itself: an endless stream)
    doc["spec"]["pipeline"]["monitor"]["live_page"] = {"port": page_port}
    kubectl.apply(doc)
    kuberay.wait(phase_is(kubectl, "Running"), "phase Running", 180)
    (first,) = inference_pods(kuberay)
    running_at = time.monotonic()
    assert_live_page_through_the_head_port(kuberay, kubectl, page_port, "chain-scale")

    scale(kubectl, 2)
    want = {"desired": 2, "running": 2, "retiring": 0}
    kuberay.wait(lambda: pool(kubectl) == want, "two inference actors running", 120)
    (added,) = inference_pods(kuberay) - {first}
    kuberay.wait(lambda: status(kubectl)["inferenceActors"] == "2/2", "the Actors column", 10)
    grown_at = time.monotonic()

    scale(kubectl, 1)
    kuberay.wait(lambda: inference_pods(kuberay) == {first}, "the released pod deleted", 120)
    want = {"desired": 1, "running": 1, "retiring": 0}
    kuberay.wait(lambda: pool(kubectl) == want, "one inference actor", 30)
    # The pool released the newest pod; the operator named exactly that pod, nothing else went.
    assert released_by_driver(kuberay) == [added]
    assert kuberay.deleted == [(added, "workersToDelete")]
    rc = kubectl.child("ray.io/v1", "RayCluster", "demo")
    group = next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == "inference")
    assert group["replicas"] == 1
    kuberay.wait(lambda: status(kubectl)["driver"].get("releasedPods") == [], "forgotten", 30)
    shrunk_at = time.monotonic()

    stopped = ray_command(ray_cluster, "stop", "chain-scale")
    assert stopped.returncode == 0, stopped.stderr
    kuberay.wait(phase_is(kubectl, "Succeeded"), "phase Succeeded", 120)
    driver = status(kubectl)["driver"]
    frames = driver["framesIngested"]
    # exit code 4: stopped before the end of its stream (endless here), every frame written
    assert driver["framesLost"] == 0 and driver["exitCode"] == 4 and frames > 0
    assert driver["framesWritten"] == frames
    assert status(kubectl)["message"].startswith(
        "the run was stopped before the end of its stream (ended by peaknet-pipeline stop, "
        "exit code 4); every frame it accepted was written"
    )
    conditions = {c["type"]: c for c in status(kubectl)["conditions"]}
    assert conditions["FramesAccounted"]["status"] == "True"
    # The driver publishes its end before its process exits; KubeRay (the stand-in, polled in
    # wait) sees the exit a moment later, so the RayJob's end is waited for, not raced.
    job = kuberay.wait(
        lambda: (
            (j := kubectl.child("ray.io/v1", "RayJob", "demo-driver"))
            and j["status"].get("jobStatus") != "RUNNING"
            and j
        ),
        "the RayJob's end",
        60,
    )
    assert job["status"]["jobStatus"] == "FAILED"  # Ray and KubeRay: any non-zero exit
    source = doc["spec"]["pipeline"]["source"]["random"]
    assert_every_event_once(tmp_path / "data", source, frames)
    found = recovery(
        cxi_files(tmp_path / "data"), RandomSourceConfig.model_validate(source), range(frames)
    )
    assert found["recovered"] == found["injected"] and found["spurious"] == 0, found
    print(
        f"\nchain scale: Running {running_at - started:.1f} s, 2 actors after "
        f"{grown_at - running_at:.1f} s, back to 1 after {shrunk_at - grown_at:.1f} s, "
        f"{frames} frames, done {time.monotonic() - started:.1f} s\n"
        f"  {timeline(kuberay, started)}"
    )


def test_a_retiring_actor_that_dies_loses_nothing_and_its_pod_is_still_released(
    operator, kuberay, kubectl, ray_cluster, tmp_path, request
):
    """Scale 1 -> 2, then 2 -> 1 with the retiring actor killed while it holds frames: its pod
    is still released and deleted, the batches it held go back to Q1 and through the other
    actor, and the run succeeds with every frame accounted for (the failure is reported)."""
    started = time.monotonic()
    operator()
    # As fast as possible: Q1 stays full, so an actor always holds staged batches.
    doc = manifest(tmp_path / "data", frames=0, rate_hz=0.0, maxReplicas=2)
    doc["spec"]["pipeline"]["runtime"] = {"run_id": "chain-retire"}
    kubectl.apply(doc)
    kuberay.wait(phase_is(kubectl, "Running"), "phase Running", 180)
    killer = ray_command(ray_cluster, "kill-retiring", "chain-retire", background=True)
    request.addfinalizer(killer.kill)  # a test failing early leaves no poller behind
    scale(kubectl, 2)
    kuberay.wait(lambda: len(inference_pods(kuberay)) == 2, "a second inference pod", 60)
    # The killer pauses both actors once they run, then kills the one the pool retires.
    kuberay.wait(lambda: select.select([killer.stdout], [], [], 0)[0], "actors paused", 120)
    assert killer.stdout.readline().strip() == "paused", killer.stderr.read()
    scale(kubectl, 1)
    kuberay.wait(lambda: killer.poll() is not None, "a retiring actor killed", 60)
    out, err = killer.communicate()
    assert killer.returncode == 0, err
    killed = json.loads(out)
    kuberay.wait(lambda: killed["node"] not in kuberay.nodes, "its pod released, deleted", 60)
    assert released_by_driver(kuberay) == [killed["node"]]
    assert kuberay.deleted == [(killed["node"], "workersToDelete")]
    stopped = ray_command(ray_cluster, "stop", "chain-retire")
    assert stopped.returncode == 0, stopped.stderr

    kuberay.wait(phase_is(kubectl, "Succeeded"), "phase Succeeded (not a hang)", 120)
    driver = status(kubectl)["driver"]
    assert driver["exitCode"] == 4  # stopped early; the failure was recovered
    assert f"inference {killed['actor']}" in driver["lastError"]  # reported, though recovered
    assert "ActorDiedError" in driver["lastError"]
    assert driver["framesLost"] == 0
    assert driver["framesWritten"] + driver["framesRejected"] == driver["framesIngested"] > 0
    frames = {c["type"]: c for c in status(kubectl)["conditions"]}["FramesAccounted"]
    assert frames["status"] == "True"
    print(
        f"\nchain retire: done {time.monotonic() - started:.1f} s, nothing lost\n"
        f"  {timeline(kuberay, started)}"
    )


def service_state(out: Path) -> dict:
    """The service's state file (service.py), {} before the first driver wrote it."""
    try:
        return json.loads((out / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}


def writing(out: Path, driver: int) -> str | None:
    """The DAQ run driver `driver` is writing (its writers hold frames of it), else None."""
    state = service_state(out)
    if state.get("driver") != driver:
        return None
    for label, run in state.get("daq_runs", {}).items():
        if sum(w["frames"] for w in run["writers"].values()) > 0:
            return label
    return None


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_killed_service_driver_is_restarted_on_the_same_cluster_and_continues_the_service(
    operator, kuberay, kubectl, ray_cluster, tmp_path
):
    """A service's driver is killed (SIGKILL) mid DAQ run; KubeRay reports its RayJob failed;
    after the back-off the operator starts attempt 1 on the same RayCluster, whose driver
    continues runs/demo: the dead driver's DAQ run is closed with what was in flight counted as
    lost, a new DAQ run streams into a folder of its own, and `stop` ends the service."""
    started = time.monotonic()
    operator()
    doc = manifest(tmp_path / "data", frames=0, rate_hz=20.0)
    pipeline = doc["spec"]["pipeline"]
    pipeline["runtime"] = {"service": True}  # its run id: the resource's name, every attempt
    # Nothing closes while a driver runs (not on a full file, not on a pause of a busy
    # machine): every frame the first one took in is in flight when it dies, and the second
    # one's DAQ run is closed by the stop.
    pipeline["writer"].update(events_per_file=100_000, daq_run_close_s=3600)
    pipeline["monitor"]["live_page"] = {"enabled": False}
    doc["spec"]["service"] = {"driverRestarts": 2, "restartBackoffSeconds": 1}
    kubectl.apply(doc)
    out = tmp_path / "data" / "runs" / "demo"  # a service's directory is named after it
    first = kuberay.wait(lambda: writing(out, 1), "driver 1 writing a DAQ run", 180)
    pods = set(kuberay.nodes)

    driver = kuberay.jobs["demo-driver"]
    driver.kill()  # SIGKILL: as when its pod is evicted, nothing runs on
    driver.wait(10)
    in_flight = service_state(out)["daq_runs"][first]["ingested"]  # its last word
    assert in_flight > 0

    kuberay.wait(lambda: "demo-driver-1" in kuberay.jobs, "attempt 1's driver", 60)
    job = kubectl.child("ray.io/v1", "RayJob", "demo-driver-1")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "demo"}
    second = kuberay.wait(lambda: writing(out, 2), "driver 2 writing a DAQ run", 120)
    assert second != first
    # Driver 2 closed the dead driver's DAQ run as it took over; it stays as it is.
    index = json.loads((out / "index.json").read_text())
    assert [e["daq_run"] for e in index["runs"]] == [first]
    before = snapshot(out / first)
    assert set(kuberay.nodes) == pods  # the same pods: no new cluster
    service = status(kubectl)["service"]
    assert service["driverRestarts"] == 1 and service["driverJob"] == "demo-driver-1"
    assert service["lastFailure"].startswith("KubeRay: job FAILED")
    events = kubectl.client.get(f"/api/v1/namespaces/{kubectl.ns}/events")["items"]
    (restarted,) = [e for e in events if e["reason"] == "DriverRestarted"]
    assert "starting driver attempt 1 on the same RayCluster" in restarted["message"]

    stopped = ray_command(ray_cluster, "stop", "demo")  # reaches attempt 1's driver
    assert stopped.returncode == 0, stopped.stderr
    kuberay.wait(phase_is(kubectl, "Succeeded"), "phase Succeeded", 120)
    assert status(kubectl)["service"]["driver"] == "Stopped"
    assert status(kubectl)["service"]["driverRestarts"] == 1

    entries = {e["daq_run"]: e for e in json.loads((out / "index.json").read_text())["runs"]}
    assert sorted(entries) == sorted([first, second])
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.is_symlink()) == sorted(
        entries
    )
    assert snapshot(out / first) == before  # never overwritten by driver 2
    # The dead driver's DAQ run: what it took in was in flight, counted as lost.
    died = entries[first]
    assert died["ended_by"] == DIED and died["lost"] == in_flight and died["frames"] == 0
    report = json.loads((out / first / "report.json").read_text())
    assert report["interrupted"]["driver"] == 1 and report["interrupted"]["lost"] == in_flight
    assert report["interrupted"]["abandoned_files"]
    assert not list((out / first).glob("*.part"))
    log = kuberay.driver_log("demo-driver-1")
    assert f"DAQ run {first} was open when driver 1 ended ({DIED})" in log
    assert f"frames lost: {in_flight}" in log
    # The new DAQ run: complete, nothing lost; the status lists both.
    assert entries[second]["complete"] and not entries[second]["lost"]
    driver = status(kubectl)["driver"]  # the second driver's: every frame it took, written
    assert driver["framesIngested"] == driver["framesWritten"] == entries[second]["frames"] > 0
    assert [r["name"] for r in driver["daqRuns"]["recent"]] == [second, first]
    assert driver["daqRuns"]["totals"]["daqRuns"] == 2
    print(
        f"\nchain service restart: {in_flight} frames lost in {first}, "
        f"{entries[second]['frames']} written in {second}, done "
        f"{time.monotonic() - started:.1f} s\n  {timeline(kuberay, started)}"
    )
