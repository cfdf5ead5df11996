"""The kind suite's own helpers, here where they can run: the scaling run's manifest is a
valid resource that fits one kind node, and the output check accepts a real run of that
manifest's pipeline (on the local Ray) and rejects what is wrong with one."""

from __future__ import annotations

import copy
import shutil

import pytest

from kind_tool import LONG_RUN, check_run, long_run_manifest, run_directory
from peaknet_operator.checks import parse_spec
from peaknet_operator.sizing import size_roles, sizing_problems
from peaknet_operator.spec import cpu_cores


def test_the_long_run_is_a_valid_resource_that_fits_a_kind_node_when_scaled():
    manifest = long_run_manifest()
    assert manifest["metadata"]["name"] == LONG_RUN
    spec, problems = parse_spec(manifest["spec"])
    assert problems == []
    assert sizing_problems(size_roles(spec), spec) == []
    cluster = spec.cluster
    assert cluster.inference.replicas == 1 and cluster.inference.max_replicas == 2
    scaled = cpu_cores(cluster.inference.cpu) * cluster.inference.max_replicas
    fixed = sum(cpu_cores(p.cpu) for p in (cluster.head, cluster.ingest, cluster.writer))
    assert scaled + fixed <= 3.0  # a 4-CPU runner also runs the control plane and KubeRay
    source = spec.pipeline.source.random
    assert source.num_frames / source.rate_hz >= 120  # streams long enough to scale during
    assert spec.pipeline.model.kind == "threshold"


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
    pipeline["monitor"] = {"progress_interval_s": 0.5, "console": False}
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
