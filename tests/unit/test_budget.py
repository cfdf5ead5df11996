"""The object-store budget: peaknet_pipeline.budget's formula, term by term, and its message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from peaknet_pipeline.budget import (
    GiB,
    MiB,
    batch_bytes,
    budget_bytes,
    config_section,
    format_bytes,
    in_flight,
    inference_batches_held,
    queue_records,
    writer_results_held,
)
from peaknet_pipeline.budget_advice import budget_problem, fitting_values
from peaknet_pipeline.config import PipelineConfig, QueueConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
B = 8 * 256 * 256 * 4  # the default random batch: 8 frames of 1 x 256 x 256 float32 = 2 MiB
M = 8 * 256 * 256  # its uint8 peak masks


def cfg_of(**sections) -> PipelineConfig:
    return PipelineConfig.model_validate(sections)


def test_a_queue_holds_the_fewer_of_its_items_and_what_its_bytes_allow_per_shard():
    q = QueueConfig(capacity_items=64, capacity_bytes=1 << 40)
    assert queue_records(q, 1, B) == 64
    q = QueueConfig(capacity_items=64, capacity_bytes=10 * MiB)
    assert queue_records(q, 1, 2 * MiB) == 5
    # Split over 2 shards of 5 MiB: 2 + 2 records of 2 MiB (bytes are bounded per shard).
    assert queue_records(q, 2, 2 * MiB) == 4
    # A record larger than a shard's bytes still goes into an empty shard: one per shard.
    assert queue_records(QueueConfig(capacity_items=8, capacity_bytes=MiB), 4, 64 * MiB) == 4
    # Items split 3, 2, 2 over 3 shards, bytes plentiful.
    assert queue_records(QueueConfig(capacity_items=7), 3, 1) == 7


def test_per_actor_bounds():
    cfg = cfg_of(inference={"buffer_depth": 3}, writer={"max_pending_batches": 5})
    assert inference_batches_held(cfg, q1_shards=1) == 3 + 1 + 2 + 1  # D + N1 + w + 1
    assert inference_batches_held(cfg, q1_shards=4) == 3 + 4 + 2 + 1
    assert writer_results_held(cfg, q2_shards=1) == 5  # P + N2 - 1
    assert writer_results_held(cfg, q2_shards=3) == 7


def test_in_flight_of_the_defaults_term_by_term():
    # One source, one inference actor, one writer: one shard per queue.
    flight = in_flight(cfg_of(), batch_bytes(cfg_of()))
    assert flight.batch.images == B and flight.batch.outputs == M
    assert flight.terms == {
        "Q1": 64 * B,
        "inference": (2 + 1 + 2 + 1) * B,
        "Q2": 64 * (B + M),
        "writer prefetch": 4 * (B + M),
        # Held until a closed file commits it: a file of 1000 events, or 256 MiB at most.
        "writer uncommitted": min(256 * MiB + B + M, (1000 // 8 + 1) * (B + M)),
    }
    assert flight.total == sum(flight.terms.values())


def test_the_largest_pool_counts_and_shards_follow_the_actor_counts():
    cfg = cfg_of(inference={"num_actors": 1, "max_actors": 3}, writer={"num_actors": 2})
    flight = in_flight(cfg, batch_bytes(cfg))
    # Q1: 1 source, 3 consumers -> 3 shards; Q2: 3 producers, 2 writers -> 3 shards.
    assert flight.terms["inference"] == 3 * (2 + 3 + 2 + 1) * B
    assert flight.terms["writer prefetch"] == 2 * (4 + 3 - 1) * (B + M)


def test_capacity_bytes_bounds_the_queue_terms():
    cfg = cfg_of(queue={"q1": {"capacity_bytes": 9 * MiB}, "q2": {"capacity_bytes": 9 * MiB}})
    flight = in_flight(cfg, batch_bytes(cfg))
    assert flight.terms["Q1"] == 4 * B  # 9 MiB // 2 MiB
    assert flight.terms["Q2"] == 3 * (B + M)  # 9 MiB // 2.5 MiB


def test_logits_and_copies_on_a_cluster():
    cfg = cfg_of(inference={"output": "logits"})
    batch = batch_bytes(cfg)
    assert batch.outputs == 8 * 256 * 256 * 2 * 4  # num_classes float32 per pixel
    flight = in_flight(cfg, batch, remote_copies=True)
    assert flight.terms["copies"] == (2 + 1) * B + 4 * (B + batch.outputs)


def test_batch_sizes_of_each_source_and_what_is_assumed():
    replay = cfg_of(source={"kind": "replay", "replay": {"batch_size": 4}})
    batch = batch_bytes(replay, frame=(1000, 2))
    assert (batch.images, batch.outputs, batch.assumed) == (4 * 2000, 4 * 1000, "")
    socket = {"kind": "socket", "socket": {"dtype": "float16"}}
    known = batch_bytes(cfg_of(source=socket, inference={"frame_shape": [2, 10, 10]}), None, 3)
    assert (known.frames, known.frame_bytes, known.assumed) == (3, 400, "")
    guessed = batch_bytes(cfg_of(source=socket))
    assert guessed.frames == 8 and guessed.frame_bytes == 4 * MiB
    assert guessed.frames_setting == "source.socket.frames_per_message"  # a setting, not a guess
    assert guessed.assumed == "4 MiB frames (inference.frame_shape unset)"


def test_fitting_config_has_no_problem_and_an_overfull_one_names_settings_that_fit():
    cfg = cfg_of()
    flight = in_flight(cfg, batch_bytes(cfg))
    assert budget_problem(cfg, flight, 2 * flight.total, embedded=True) is None
    # 568 MiB in flight; 0.6 x 800 MiB = 480 MiB: shorter queues or files fit, smaller
    # buffers cannot.
    store = 800 * MiB
    message = budget_problem(cfg, flight, store, embedded=True)
    assert message.startswith("object store budget: this config can hold 568 MiB")
    assert "Q1 128 MiB" in message and "ray.object_store_budget_fraction=0.6" in message
    fixes = fitting_values(cfg, flight, store)
    assert [path for path, _ in fixes] == [
        "queue.q1.capacity_items",
        "queue.q2.capacity_items",
        "writer.events_per_file",
        "source.random.batch_size",
    ]
    for path, value in fixes:
        assert f"{path}={value}" in message
        section, _, name = path.rpartition(".")
        for tried, fits in ((value, True), (value + 1, False)):  # ... the largest that fits
            trial = cfg.model_copy(deep=True)
            setattr(config_section(trial, section), name, tried)
            assert (in_flight(trial, batch_bytes(trial)).total <= budget_bytes(cfg, store)) == fits
    need = int(message.split("ray.object_store_memory_bytes=")[1].split()[0])
    assert budget_problem(cfg, flight, need, embedded=True) is None
    assert budget_problem(cfg, flight, need - MiB, embedded=True) is not None
    cluster = budget_problem(cfg, flight, store, embedded=False)
    assert "ray.object_store_memory_bytes" not in cluster
    assert "a cluster object store of at least" in cluster


@pytest.mark.parametrize("name", ["demo.yaml", "default.yaml", "673m.yaml", "replay.yaml"])
def test_example_configs_fit_the_store_of_a_small_laptop(name):
    """1 GiB at the default fraction: less than Ray gives a laptop with 8 GB of RAM (30 %),
    and what the test session's Ray has. The replay example replays the demo's frames."""
    cfg = load_config(CONFIGS / name)
    frame = (256 * 256, 4) if cfg.source.kind == "replay" else None
    flight = in_flight(cfg, batch_bytes(cfg, frame=frame))
    assert not flight.batch.assumed
    assert budget_problem(cfg, flight, 1 << 30, embedded=True) is None, flight.describe()


def test_the_socket_example_states_its_setting_and_its_assumption():
    cfg = load_config(CONFIGS / "socket.yaml")
    message = budget_problem(cfg, in_flight(cfg, batch_bytes(cfg)), 64 * MiB, embedded=True)
    assert "a batch is 8 frames of 4 MiB (source.socket.frames_per_message=8)" in message
    assert "assumed 4 MiB frames (inference.frame_shape unset)" in message


@pytest.mark.parametrize(
    "n, text", [(512, "512 B"), (1536, "1.5 KiB"), (316 * MiB, "316 MiB"), (3 << 30, "3 GiB")]
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_check_budget_fails_a_known_batch_and_only_warns_about_an_assumed_one(caplog):
    from peaknet_pipeline.errors import StartupError
    from peaknet_pipeline.preflight import check_budget

    with pytest.raises(StartupError, match="^object store budget: .*queue.q1.capacity_items="):
        check_budget(cfg_of(), 800 * MiB, nodes=1)
    socket = cfg_of(source={"kind": "socket"})
    with caplog.at_level("WARNING", logger="peaknet_pipeline.preflight"):
        flight = check_budget(socket, 64 * MiB, nodes=1)
    assert flight.batch.assumed
    assert "set inference.frame_shape to check it for certain" in caplog.text
    assert "copies" in check_budget(cfg_of(), 1 << 40, nodes=2).terms


# -- issue 20: socket sources are checked, and the message's advice is true --------------------
EPIX = {  # docs/tuning.md's worked example: an ePix10k2M over two ports, 8 frames a message
    "source": {"kind": "socket", "socket": {"addresses": ["tcp://0.0.0.0:1", "tcp://0.0.0.0:2"]}},
    "inference": {"frame_shape": [16, 352, 384], "num_actors": 2, "buffer_depth": 3},
    "queue": {"q1": {"capacity_items": 16}, "q2": {"capacity_items": 16}},
}


def test_a_socket_batch_is_source_socket_frames_per_message_frames_and_nothing_is_assumed():
    cfg = cfg_of(**EPIX)
    batch = batch_bytes(cfg)
    assert (batch.frames, batch.frame_bytes, batch.assumed) == (8, 16 * 352 * 384 * 4, "")
    cfg.source.socket.frames_per_message = 3
    assert batch_bytes(cfg).frames == 3


def test_a_socket_config_over_budget_is_refused_naming_frames_per_message():
    """Seen: `can hold 4.08 GiB ... of a 172 MiB budget ... (assumed 8 frames per socket
    message); set inference.frame_shape to check it for certain`, and the run started."""
    from peaknet_pipeline.errors import StartupError
    from peaknet_pipeline.preflight import check_budget

    with pytest.raises(StartupError) as err:
        check_budget(cfg_of(**EPIX), 300_000_000, nodes=1)
    message = str(err.value)
    assert message.startswith("object store budget: this config can hold 4.08 GiB")
    assert "source.socket.frames_per_message=8" in message
    assert "assumed" not in message


def _fixes(message: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"([a-z_0-9]+(?:\.[a-z_0-9]+)+)=(\d+)", message)}


def test_the_advice_is_true_when_no_single_setting_fits_and_the_store_would_not_fit_the_machine():
    """Seen: `any one of these fits: ray.object_store_memory_bytes=...` (17.1 GiB) on a
    machine of 23 GiB: one option, and not one that fits the machine."""
    cfg = cfg_of(
        source={"random": {"frame_shape": [1, 4096, 4096]}},
        queue={"q1": {"capacity_items": 64}},
    )
    flight = in_flight(cfg, batch_bytes(cfg))
    store, machine = 7 * GiB, 23 * GiB
    message = budget_problem(cfg, flight, store, embedded=True, machine_bytes=machine)
    assert "any one of these fits" not in message
    assert "no one setting fits on its own" in message
    assert "ray.object_store_memory_bytes=" not in message  # more than the machine can give
    assert "would take more than 50% of this machine's 23 GiB" in message
    together = _fixes(message.split("these together fit: ")[1].split(";")[0])
    assert together, message
    trial = cfg.model_copy(deep=True)
    for path, value in together.items():
        section, _, name = path.rpartition(".")
        setattr(config_section(trial, section), name, value)
    assert in_flight(trial, batch_bytes(trial)).total <= budget_bytes(cfg, store)


def test_each_single_option_fits_and_the_batch_size_is_one_of_them():
    cfg = cfg_of(source={"random": {"frame_shape": [1, 1024, 1024]}})  # 32 MiB batches
    flight = in_flight(cfg, batch_bytes(cfg))
    store = 2 * GiB
    message = budget_problem(cfg, flight, store, embedded=True, machine_bytes=64 * GiB)
    singles = _fixes(message.split("each of these fits on its own: ")[1])
    assert "source.random.batch_size" in singles and "ray.object_store_memory_bytes" in singles
    for path, value in singles.items():
        if path.startswith("ray."):
            assert budget_problem(cfg, flight, value, embedded=True) is None
            continue
        trial = cfg.model_copy(deep=True)
        section, _, name = path.rpartition(".")
        setattr(config_section(trial, section), name, value)
        assert in_flight(trial, batch_bytes(trial)).total <= budget_bytes(cfg, store), path


def test_a_socket_message_longer_than_frames_per_message_is_split_into_batches():
    """The budget sizes a socket batch by source.socket.frames_per_message, so a message with
    more frames must not become one larger batch."""
    import numpy as np

    from peaknet_pipeline.sources.socket import split_message

    images = np.arange(7 * 2 * 2, dtype=np.float32).reshape(7, 1, 2, 2)
    meta = {"event_id": np.arange(7), "timestamp": np.arange(7) * 10}
    parts = list(split_message(images, meta, 3))
    assert [p[0].shape[0] for p in parts] == [3, 3, 1]
    assert np.array_equal(np.concatenate([p[0] for p in parts]), images)
    assert [list(p[1]["event_id"]) for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(parts[2][1]["timestamp"]) == [60]
    whole = list(split_message(images, meta, 8))
    assert len(whole) == 1 and whole[0][0] is images
