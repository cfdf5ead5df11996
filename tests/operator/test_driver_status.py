"""The driver's side of the contract: the real `peaknet_pipeline.driver.run` publishes
`status.driver` of its resource through the API emulator, and `kubectl get`'s columns read it.
The publisher's rules (only on change, at most every few seconds, once at the end, nothing
without the environment) are checked against the emulator too."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import yaml

from conftest import CRD_FILE, example, wait_for
from peaknet_pipeline import kube
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.monitor import Snapshot
from peaknet_pipeline.monitor.verdict import WORDS
from peaknet_pipeline.pool_plan import PoolState


def printer_columns(obj: dict) -> dict[str, object]:
    """What `kubectl get pnp` shows: each column's jsonPath evaluated on the object."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    values = {}
    for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        node: object = obj
        for key in column["jsonPath"].strip(".").split("."):
            node = node.get(key) if isinstance(node, dict) else None
        values[column["name"]] = node
    return values


@pytest.fixture
def resource(kubectl) -> str:
    kubectl.apply(example())
    return "demo"


@pytest.fixture
def driver_env(emulator, kubectl, resource, monkeypatch):
    monkeypatch.setenv(kube.ENV_NAME, resource)
    monkeypatch.setenv(kube.ENV_NAMESPACE, kubectl.ns)
    monkeypatch.setenv(kube.ENV_API_URL, emulator.url)


@pytest.mark.ray
@pytest.mark.slow  # a real pipeline run on the session Ray (about 10 s here)
def test_real_driver_run_publishes_progress_and_result(
    ray_session, driver_env, kubectl, operator, tmp_path, monkeypatch
):
    from helpers import SMALL_MODEL
    from peaknet_pipeline.driver import run

    operator()
    patches = []
    publish = kube.KubeClient.merge_patch

    def recording(self, path, body):
        patches.append(body["status"]["driver"])
        return publish(self, path, body)

    monkeypatch.setattr(kube.KubeClient, "merge_patch", recording)
    monkeypatch.setattr(kube, "PUBLISH_INTERVAL_S", 0.0)
    spec = example()["spec"]["pipeline"]
    spec["source"]["random"].update(num_frames=64, frame_shape=[1, 64, 64], peaks_per_frame=4)
    spec["inference"]["frame_shape"] = [1, 64, 64]
    spec["model"] = {"kind": "peaknet", **SMALL_MODEL}
    spec["queue"] = {"q1": {"capacity_items": 8}, "q2": {"capacity_items": 8}}
    spec["writer"]["output_dir"] = str(tmp_path / "{run_id}")
    spec["monitor"] = {"progress_interval_s": 0.2, "console": False, "report_html": False}
    report = run(PipelineConfig.model_validate(spec))
    assert report["exit_code"] == 0

    driver = kubectl.get("demo")["status"]["driver"]
    assert driver["state"] == "Succeeded" and driver["exitCode"] == 0
    assert driver["framesIngested"] == driver["framesInferred"] == driver["framesWritten"] == 64
    assert driver["framesLost"] == 0 and driver.get("lastError") is None  # null: merged away
    assert driver["inference"] == {"desired": 1, "running": 0, "retiring": 0}
    assert patches[0]["state"] == "Running" and patches[-1]["state"] == "Succeeded"
    # The whole run's verdict at the end (the schema keeps it; the column shows it).
    assert driver["verdict"] in WORDS and driver["verdict"] == report["verdict"]["word"]
    assert driver["verdictMessage"] == report["verdict"]["sentence"]
    columns = printer_columns(kubectl.get("demo"))
    assert columns["Verdict"] == driver["verdict"]
    assert columns["Frames In"] == 64 and columns["Written"] == 64
    assert isinstance(columns["Frames/s"], (int, float)) and columns["Frames/s"] > 0
    # The operator folds the driver's report into phase and FramesAccounted.
    wait_for(lambda: kubectl.get("demo")["status"].get("phase") == "Succeeded", "Succeeded")
    wait_for(lambda: printer_columns(kubectl.get("demo"))["Phase"] == "Succeeded", "Phase column")
    conditions = {c["type"]: c for c in kubectl.get("demo")["status"]["conditions"]}
    assert conditions["FramesAccounted"]["status"] == "True"


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def pool_state(running: int = 1, retiring: int = 0, released: tuple = ()) -> PoolState:
    return PoolState(running, running, 0, retiring, list(released), {})


def fake_pipeline(running: int = 1) -> SimpleNamespace:
    pool = SimpleNamespace(state=lambda: pool_state(running))
    return SimpleNamespace(cfg=PipelineConfig(), ingest_stopped=None, pool=pool)


def test_publisher_patches_only_changes_and_at_most_every_interval(driver_env, kubectl):
    clock = FakeClock()
    ref = kube.resource_from_env()
    client = kube.KubeClient.from_env()
    sent = []
    publisher = kube.StatusPublisher(client, ref, min_interval_s=5.0, clock=clock)
    original = client.merge_patch
    client.merge_patch = lambda path, body: sent.append(body) or original(path, body)

    publisher.started(fake_pipeline())
    assert len(sent) == 1 and sent[0]["status"]["driver"]["state"] == "Running"
    snap = Snapshot(counts={"ingested": 8, "inferred": 0, "written": 0})
    clock.t += 1.0
    publisher.progress(snap)
    assert len(sent) == 1  # changed, but within the interval
    clock.t += 5.0
    publisher.progress(snap)
    assert len(sent) == 2 and sent[-1]["status"]["driver"]["framesIngested"] == 8
    clock.t += 10.0
    publisher.progress(Snapshot(counts={"ingested": 8, "inferred": 0, "written": 0}))
    assert len(sent) == 2  # nothing changed: no patch
    clock.t += 10.0
    publisher.progress(Snapshot(counts={"ingested": 16, "inferred": 8, "written": 0}))
    assert sent[-1]["status"]["driver"]["framesPerSecond"] == pytest.approx(8 / 20.0)
    assert kubectl.get("demo")["status"]["driver"]["framesInferred"] == 8
    clock.t += 10.0
    judged = Snapshot(counts={"ingested": 16, "inferred": 8, "written": 0}, verdict="starved")
    judged.verdict_sentence = "inference waited for batches 90% of its time"
    publisher.progress(judged)  # the live verdict changed: published
    driver = kubectl.get("demo")["status"]["driver"]
    assert driver["verdict"] == "starved" and driver["verdictMessage"].startswith("inference")


def test_pool_changes_are_published_at_once_with_released_pods_whole(driver_env, kubectl):
    # The operator lowers the inference group's replicas only once the driver lists the pods
    # it released: that must not wait for the progress throttle.
    clock = FakeClock()
    publisher = kube.StatusPublisher(
        kube.KubeClient.from_env(), kube.resource_from_env(), min_interval_s=60.0, clock=clock
    )
    publisher.started(fake_pipeline(running=2))
    publisher.pool_changed(pool_state(running=1, retiring=1))
    publisher.pool_changed(pool_state(running=1, released=("pnp-inference-b",)))
    driver = kubectl.get("demo")["status"]["driver"]
    assert driver["inference"] == {"desired": 1, "running": 1, "retiring": 0}
    assert driver["releasedPods"] == ["pnp-inference-b"]
    publisher.pool_changed(pool_state(running=1))  # the pod left the cluster
    assert kubectl.get("demo")["status"]["driver"]["releasedPods"] == []


def test_the_publisher_follows_the_desired_count_and_survives_a_bad_spec(driver_env, kubectl):
    publisher = kube.status_publisher()
    kubectl.patch("demo", {"spec": {"cluster": {"inference": {"replicas": 2}}}})
    assert publisher.desired_inference() == 2
    broken = kube.StatusPublisher(kube.KubeClient("http://127.0.0.1:9"), kube.resource_from_env())
    assert broken.desired_inference() is None  # unreachable: nothing to follow, no exception


def test_publisher_reports_a_startup_failure(driver_env, kubectl):
    publisher = kube.status_publisher()
    assert isinstance(publisher, kube.StatusPublisher)
    publisher.failed("ValueError: no GPUs")
    driver = kubectl.get("demo")["status"]["driver"]
    assert driver == {
        **driver,
        "state": "Failed",
        "exitCode": 2,
        "lastError": "ValueError: no GPUs",
    }


def test_a_run_stopped_early_is_published_as_succeeded_with_exit_code_4(driver_env, kubectl):
    publisher = kube.status_publisher()
    publisher.started(fake_pipeline())
    counts = {"frames_ingested": 40, "frames_inferred": 40, "events_handled_by_writers": 40}
    counts.update(frames_rejected_by_inference=0, events_failed_in_writers=0, lost_x=0)
    report = {"exit_code": 4, "ended_by": "peaknet-pipeline stop", "errors": []}
    publisher.finish({**report, "accounting": counts, "streaming_s": 4.0, "verdict": None})
    driver = kubectl.get("demo")["status"]["driver"]
    assert driver["state"] == "Succeeded" and driver["exitCode"] == 4
    assert driver["lastError"] == "ended by peaknet-pipeline stop"  # the operator's message


def test_without_the_environment_nothing_is_published(monkeypatch):
    for var in (kube.ENV_NAME, kube.ENV_NAMESPACE, kube.ENV_API_URL):
        monkeypatch.delenv(var, raising=False)
    publisher = kube.status_publisher()
    assert type(publisher) is kube.NullPublisher


def test_an_unreachable_api_never_fails_the_run(caplog):
    client = kube.KubeClient("http://127.0.0.1:9")  # nothing listens on the discard port
    sent = []
    request = client.request

    def recording(method, path, body=None, content_type=""):
        sent.append((method, path, body["status"]["driver"]))
        return request(method, path, body, content_type)

    client.request = recording
    ref = kube.ResourceRef("demo", "ns")
    publisher = kube.StatusPublisher(client, ref, min_interval_s=60.0, clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="peaknet_pipeline.kube"):
        publisher.started(fake_pipeline())  # logged, not raised
        publisher.progress(Snapshot(counts={"ingested": 8, "inferred": 0, "written": 0}))
        publisher.failed("boom")
    status = ref.path("status")
    assert [(method, path, driver["state"]) for method, path, driver in sent] == [
        ("PATCH", status, "Running"),
        ("PATCH", status, "Running"),  # nothing was published: not throttled, tried again
        ("PATCH", status, "Failed"),
    ]
    assert sent[1][2]["framesIngested"] == 8 and sent[2][2]["lastError"] == "boom"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # one kind of error: logged once
    assert warnings[0].startswith("could not publish status to ns/demo: PATCH " + status)


def test_desired_inference_actors_reads_the_spec(driver_env, kubectl):
    kubectl.patch(
        "demo", {"spec": {"cluster": {"inference": {"replicas": 3, "actorsPerWorker": 2}}}}
    )
    assert kube.desired_inference_actors(kube.KubeClient.from_env(), kube.resource_from_env()) == 6


def test_pipeline_defaults_match_the_operator_spec():
    from peaknet_operator.spec import InferenceGroupSpec

    group = InferenceGroupSpec()
    assert group.replicas == kube.DEFAULT_INFERENCE_REPLICAS
    assert group.actors_per_worker == kube.DEFAULT_ACTORS_PER_WORKER
