"""Object-store sizing: the formula in peaknet_operator.sizing's docstring, term by term (the
per-actor and per-queue bounds are peaknet_pipeline.budget's, tested in tests/unit/test_budget.py)."""

from __future__ import annotations

import math

import pytest

from peaknet_operator.checks import parse_spec
from peaknet_operator.quantity import format_memory, memory_bytes
from peaknet_operator.sizing import RAY_MIN_OBJECT_STORE_BYTES, size_roles, sizing_problems
from peaknet_operator.spec import PeakNetPipelineSpec

MiB = 1 << 20


def spec_of(raw: dict) -> PeakNetPipelineSpec:
    spec, problems = parse_spec(raw)
    assert problems == [], problems
    return spec


def test_ingest_holds_every_image_in_flight():
    # b = 8 frames x 256x256 float32 = 2 MiB; S=1, I=2 (maxReplicas 2), W=1, D=2, P=4, w=2;
    # both queues get 2 shards (one per actor on the busier side).
    spec = spec_of({"cluster": {"inference": {"maxReplicas": 2}}})
    ingest = size_roles(spec)["ingest"]
    b, r = 2 * MiB, 2 * MiB + 8 * 256 * 256  # a Result: the frames and their masks
    held_i = 2 + 2 + 2 + 1  # D + N1 + w + 1
    held_w = 4 + 2 - 1  # P + N2 - 1
    # A writer's uncommitted Results: min(U + r, (ceil(E / B) + 1) x r), their images here.
    uncommitted = math.ceil(min(256 * MiB + r, (math.ceil(1000 / 8) + 1) * r) * b / r)
    assert ingest.terms == {
        "Q1": 64 * b,
        "inference buffers": 2 * held_i * b,
        "Q2 images": 64 * b,
        "writer prefetch": 1 * held_w * b,
        "uncommitted images": uncommitted,
    }
    # 25 % headroom, rounded up to whole MiB
    total = (64 + 2 * held_i + 64 + held_w) * b + uncommitted
    assert ingest.store_bytes == math.ceil(total * 1.25 / MiB) * MiB


def test_capacity_bytes_bounds_the_queue_terms():
    raw = {
        "pipeline": {
            "queue": {"q1": {"capacity_bytes": 8 * MiB}, "q2": {"capacity_bytes": 4 * MiB}}
        }
    }
    ingest = size_roles(spec_of(raw))["ingest"]
    # Q1: 4 batches of 2 MiB; Q2: one Result (2 MiB of frames + 0.5 MiB of mask) per shard.
    assert ingest.terms["Q1"] == 8 * MiB and ingest.terms["Q2 images"] == 2 * MiB


def test_inference_pod_holds_its_actors_staging_and_unwritten_masks():
    # 2 actors per pod fit 2 CPUs; I = 6 gives Q1 and Q2 6 shards each.
    # staged: 2 x (D + N1 + w + 1) x b; masks: (Q2 records + W x held_w) x m.
    raw = {
        "cluster": {"inference": {"replicas": 3, "actorsPerWorker": 2, "cpu": "2", "memory": "4Gi"}}
    }
    inference = size_roles(spec_of(raw))["inference"]
    b, m = 2 * MiB, 8 * 256 * 256
    assert inference.terms["staged batches"] == 2 * (2 + 6 + 2 + 1) * b
    assert inference.terms["masks"] == (64 + 1 * (4 + 6 - 1)) * m


def test_writer_pod_holds_its_prefetch_and_the_store_minimum_applies():
    writer = size_roles(spec_of({}))["writer"]
    assert writer.terms == {"writer prefetch": 4 * (2 * MiB + 8 * 256 * 256)}  # P + N2 - 1 = 4
    assert writer.store_bytes == RAY_MIN_OBJECT_STORE_BYTES


def test_socket_sizing_uses_frame_shape_or_the_expected_frame_bytes():
    socket = {"kind": "socket", "socket": {"addresses": ["tcp://0.0.0.0:5000"]}}
    four = {**socket, "socket": {**socket["socket"], "frames_per_message": 4}}
    raw = {"pipeline": {"source": four, "inference": {"frame_shape": [1, 512, 512]}}}
    assert size_roles(spec_of(raw))["ingest"].terms["Q1"] == 64 * 4 * 512 * 512 * 4
    two = {**socket, "socket": {**socket["socket"], "frames_per_message": 2}}
    raw = {
        "pipeline": {"source": two},
        "cluster": {"sizing": {"expectedFrameBytes": MiB}},
    }
    assert size_roles(spec_of(raw))["ingest"].terms["Q1"] == 64 * 2 * MiB


def test_defaults_fit_and_an_unfittable_spec_names_settings_and_a_value_that_fits():
    assert sizing_problems(size_roles(spec_of({})), spec_of({})) == []
    raw = {"cluster": {"ingest": {"memory": "512Mi"}}}
    spec = spec_of(raw)
    sizes = size_roles(spec)
    (problem,) = sizing_problems(sizes, spec)
    assert "spec.cluster.ingest.memory=512Mi" in problem
    assert "spec.cluster.sizing.minHeap.ingest=384Mi" in problem
    wanted = problem.split("to at least ")[1].split(",")[0]
    largest = "uncommitted images (207Mi: spec.pipeline.writer.max_uncommitted_bytes"
    assert largest in problem
    # The suggested value does fit.
    fixed = spec_of({"cluster": {"ingest": {"memory": wanted}}})
    assert sizing_problems(size_roles(fixed), fixed) == []
    assert memory_bytes(wanted) == sizes["ingest"].needed_bytes + (
        -sizes["ingest"].needed_bytes % MiB
    )


@pytest.mark.parametrize(
    "n, text", [(MiB, "1Mi"), (1536 * MiB, "1536Mi"), (2 << 30, "2Gi"), (MiB + 1, "2Mi")]
)
def test_format_memory_rounds_up_to_whole_mebibytes(n, text):
    assert format_memory(n) == text
