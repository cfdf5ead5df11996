"""The kind suite's own helpers, here where they can run: the scaling run's manifest is a
valid resource that fits one kind node, and the output check accepts a real run of that
manifest's pipeline (on the local Ray) and rejects what is wrong with one."""

from __future__ import annotations

import copy
import shutil

import pytest
import yaml

from kind_tool import (
    CONTROL_PLANE,
    DIAGNOSE_S,
    EXAMPLE,
    GIB,
    IMAGE_BUDGET,
    KIND_SH,
    KUBERAY_OPERATOR,
    LONG_RUN,
    RUNNER_FREE_DISK,
    WORKFLOW,
    budget_problems,
    check_run,
    disk_problems,
    kind_node,
    kind_sizing,
    long_run_manifest,
    run_directory,
    script_waits,
)
from peaknet_operator.checks import parse_spec
from peaknet_operator.sizing import size_roles, sizing_problems


def test_the_long_run_is_a_valid_resource_that_fits_a_kind_node_when_scaled():
    manifest = long_run_manifest()
    assert manifest["metadata"]["name"] == LONG_RUN
    spec, problems = parse_spec(manifest["spec"])
    assert problems == []
    assert sizing_problems(size_roles(spec), spec) == []
    cluster = spec.cluster
    assert cluster.inference.replicas == 1 and cluster.inference.max_replicas == 2
    source = spec.pipeline.source.random
    assert source.num_frames / source.rate_hz >= 120  # streams long enough to scale during
    assert spec.pipeline.model.kind == "threshold"


def test_the_kind_node_carries_the_control_plane_and_both_operators():
    node = kind_node()
    assert sum(p.requests.get("cpu", 0) for p in CONTROL_PLANE) == 950
    assert sum(p.requests.get("memory", 0) for p in CONTROL_PLANE) == 290 << 20
    assert KUBERAY_OPERATOR.requests == {"cpu": 100, "memory": 512 << 20}
    assert node.allocatable["cpu"] == 4000
    assert node.requested["cpu"] == 950 + 100 + 100  # control plane, KubeRay, our operator


@pytest.mark.parametrize("which", ["demo", "long run"])
def test_every_pod_fits_the_kind_node_as_applied_and_after_kubectl_scale(which):
    """The demo (examples/run.yaml) and the scaling run on the suite's one 4-CPU node: head,
    workers, the driver's submitter pod, and the long run at 2 inference pods. Before the
    renderer gave the submitter a template, KubeRay's default submitter (500m) did not fit
    next to the control plane: "demo as applied: submitter: 0/1 nodes are available: 1
    Insufficient cpu." """
    manifest = yaml.safe_load(EXAMPLE.read_text()) if which == "demo" else long_run_manifest()
    assert kind_sizing(manifest) == []


def test_kubernetes_default_submitter_would_not_fit_next_to_the_demo():
    """What the sizing caught: without a submitterPodTemplate KubeRay asks 500m for it."""
    from peaknet_operator.render import render_all
    from peaknet_operator.scheduling import fits, pods_of

    spec, _ = parse_spec(yaml.safe_load(EXAMPLE.read_text())["spec"])
    children = render_all("demo", "default", spec)
    for child in children:
        if child["kind"] == "RayJob":
            child["spec"].pop("submitterPodTemplate", None)
    assert fits(pods_of(children), [kind_node()]) == [
        "submitter: 0/1 nodes are available: 1 Insufficient cpu."
    ]


def test_the_suites_waits_fit_the_workflows_timeouts():
    """Before: kind.sh's literal waits added up to 6840 s (114 min) plus the unbounded image
    builds, against a 90-minute job; seen failing as "kind.sh waits outside a WAIT_ variable:
    ['--timeout=3', 'wait_for 3', ...]" and "workflow steps without timeout-minutes"."""
    script, workflow = KIND_SH.read_text(), WORKFLOW.read_text()
    assert budget_problems(script, workflow) == []
    waits = script_waits(script)
    assert len(waits) >= 15 and all(w > 0 for w in waits.values())
    job = yaml.safe_load(workflow)["jobs"]["kind"]
    (e2e,) = [step for step in job["steps"] if step.get("name") == "kind e2e"]
    worst = sum(waits.values()) + DIAGNOSE_S
    assert worst <= 60 * e2e["timeout-minutes"] < worst + 10 * 60  # derived, not padded
    assert job["timeout-minutes"] == sum(step["timeout-minutes"] for step in job["steps"])


def test_the_budget_check_refuses_what_does_not_add_up():
    script, workflow = KIND_SH.read_text(), WORKFLOW.read_text()
    longer = script.replace("WAIT_DEMO=", "WAIT_DEMO=9", 1)
    assert any("waits add up to" in p for p in budget_problems(longer, workflow))
    literal = script + '\nwait_for 60 "x" true\n'
    assert any("outside a WAIT_ variable" in p for p in budget_problems(literal, workflow))
    shorter_job = workflow.replace("timeout-minutes: 200", "timeout-minutes: 90", 1)
    assert any("the job's" in p for p in budget_problems(script, shorter_job))


def test_the_disk_sums_count_every_copy_of_the_images():
    """The images in Docker, the `kind load` tar and containerd's layers and snapshot: on the
    runner's 14 GB as it comes, even a 3 GiB image set does not fit; after 'Free disk' it does."""
    assert disk_problems(RUNNER_FREE_DISK, 3 * GIB, built=False) != []
    assert disk_problems(40 * GIB, IMAGE_BUDGET, built=False) == []
    (problem,) = disk_problems(12 * GIB, 4 * GIB, built=True)
    assert problem.startswith("12.0 GiB free, 15.0 GiB needed: 3 x 4.0 GiB of images")
    assert disk_problems(100 * GIB, IMAGE_BUDGET + GIB, built=True) == [
        "the images take 6.0 GiB > their budget, 5 GiB"
    ]


def test_the_e2e_tests_own_timeout_is_the_scripts_budget():
    from test_kind import E2E_TIMEOUT_S

    assert E2E_TIMEOUT_S == sum(script_waits(KIND_SH.read_text()).values()) + DIAGNOSE_S


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    """The long run's pipeline, shortened, run on the local Ray: a run directory as the
    suite copies one out of the volume."""
    from peaknet_pipeline.config import PipelineConfig
    from peaknet_pipeline.driver import run

    out = tmp_path_factory.mktemp("copied-out")
    pipeline = copy.deepcopy(long_run_manifest()["spec"]["pipeline"])
    pipeline["source"]["random"].update(num_frames=48, rate_hz=0.0)
    pipeline["writer"]["output_dir"] = str(out / "runs" / "{run_id}")
    pipeline["monitor"] = {"progress_interval_s": 0.5, "console": False, "report_html": False}
    report = run(PipelineConfig.model_validate(pipeline))
    assert report["exit_code"] == 0
    return out


@pytest.mark.ray
@pytest.mark.slow  # a real pipeline run on the session Ray (a few seconds)
def test_the_check_accepts_a_real_run_and_finds_its_peaks(finished_run):
    run_dir = run_directory(finished_run)
    assert check_run(run_dir, 48, min_recovery=0.95) == []


@pytest.mark.ray
@pytest.mark.slow
def test_the_check_names_what_is_wrong(finished_run, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(run_directory(finished_run), broken)
    assert any("50 frames expected: 48 ingested" in p for p in check_run(broken, 50, None))
    (first, *_) = sorted(broken.glob("*.cxi"))
    first.rename(first.with_suffix(".cxi.part"))
    problems = check_run(broken, 48, None)
    assert any("partial files" in p for p in problems), problems
    assert any("events in the files" in p for p in problems), problems
