"""The verdict on synthetic timelines: one per word, and the evidence each sentence names.

A timeline is built from per-second rates of the counters the actors report (the same keys as
their `stats()`), so each case states the situation it stands for in its arguments.
"""

from __future__ import annotations

import pytest

from helpers import QUEUE_CAPACITY, timeline
from peaknet_pipeline.monitor import Sample, TimeSeries
from peaknet_pipeline.monitor.verdict import run_verdict, streaming_window, verdict

# Inference fed and busy: 40 frames/s, 95% of its time running the model.
FED = {"frames_out": 40, "busy_s": 0.95, "q2_blocked_s": 0.0}
FAST_INGEST = {"frames_out": 40, "source_s": 0.3, "receive_s": 0.0, "put_s": 0.7}
WRITER = {"frames_out": 40, "busy_s": 0.3}


def test_a_fed_inference_with_low_queues_is_ok():
    judged = verdict(timeline(ingest=FAST_INGEST, inference=FED, writer=WRITER, q1=4))
    assert judged.word == "ok"
    assert "inference busy 95% on cpu" in judged.sentence
    assert judged.evidence["inference_fps"] == 40.0


@pytest.mark.parametrize(
    ("ingest", "bound", "share"),
    [
        (
            {"frames_out": 10, "source_s": 1.0, "receive_s": 0.9, "put_s": 0.0},
            "receive-bound",
            "90%",
        ),
        (
            {"frames_out": 10, "source_s": 0.85, "receive_s": 0.05, "put_s": 0.1},
            "decode-bound",
            "80%",
        ),
        ({"frames_out": 10, "source_s": 0.2, "receive_s": 0.0, "put_s": 0.8}, "put-bound", "80%"),
    ],
    ids=["receive", "decode", "put"],
)
def test_inference_waiting_on_an_empty_q1_is_starved_and_names_the_ingest_bound(
    ingest, bound, share
):
    slow = {"frames_out": 10, "busy_s": 0.25}
    judged = verdict(timeline(ingest=ingest, inference=slow, writer=WRITER, q1=0))
    assert judged.word == "starved"
    assert "waited for batches 75% of its time" in judged.sentence
    assert "ingest is the slower side: it delivered 10.0 frames/s" in judged.sentence
    assert "where inference could take 40.0" in judged.sentence
    assert f"{bound}" in judged.sentence and f"{share} of its time" in judged.sentence
    assert judged.evidence["ingest_fps"] < judged.evidence["inference_capacity_fps"]


def test_a_silent_source_starves_inference_even_before_any_counter_of_it_moves():
    # Nothing arrives: ingest waits for input the whole time, inference reports no time at
    # all (its compute loop has not returned from waiting once).
    waiting = {"frames_out": 0, "source_s": 1.0, "receive_s": 1.0, "put_s": 0.0}
    judged = verdict(timeline(ingest=waiting, inference={"frames_out": 0}, writer={}))
    assert judged.word == "starved" and "receive-bound" in judged.sentence
    assert "waited for batches 100%" in judged.sentence


def test_a_full_q1_is_backlogged_and_says_how_much_more_inference_would_keep_up():
    # Inference does 40 frames/s busy all the time; ingest made its 40 frames/s in a quarter
    # of each second (the rest blocked on the full Q1): it could deliver 160 frames/s.
    ingest = {"frames_out": 40, "source_s": 0.25, "receive_s": 0.0, "put_s": 0.75}
    busy = {"frames_out": 40, "busy_s": 1.0}
    judged = verdict(timeline(ingest=ingest, inference=busy, writer=WRITER, q1=QUEUE_CAPACITY))
    assert judged.word == "backlogged"
    assert "Q1 stayed 100% full" in judged.sentence  # at the end of every interval
    assert "ingest could deliver 160.0 frames/s" in judged.sentence
    assert "about 4.0x the inference capacity" in judged.sentence
    assert "inference.num_actors 1 -> 4" in judged.sentence


def test_q1_full_by_bytes_with_few_records_is_backlogged_too():
    busy = {"frames_out": 40, "busy_s": 1.0}
    judged = verdict(timeline(ingest=FAST_INGEST, inference=busy, writer=WRITER, q1=2, q1_bytes=1))
    assert judged.word == "backlogged"


def test_a_full_q2_is_writer_bound_even_though_q1_fills_behind_it():
    blocked = {"frames_out": 12, "busy_s": 0.3, "q2_blocked_s": 0.65}
    writer = {"frames_out": 12, "busy_s": 0.98}
    judged = verdict(
        timeline(
            ingest=FAST_INGEST,
            inference=blocked,
            writer=writer,
            q1=QUEUE_CAPACITY,
            q2=QUEUE_CAPACITY,
        )
    )
    assert judged.word == "writer-bound"
    assert "busy 98% of their time" in judged.sentence
    assert "blocked on Q2 65% of its time" in judged.sentence
    assert "writer.num_actors" in judged.sentence


def test_any_spill_in_the_window_comes_first():
    judged = verdict(
        timeline(
            ingest=FAST_INGEST,
            inference=FED,
            writer=WRITER,
            q1=QUEUE_CAPACITY,
            spilled_per_s=5_000_000,
        )
    )
    assert judged.word == "spilling"
    assert "spilled 50 MB to disk in 10 s" in judged.sentence
    assert "use peaked at 10 MB of 100 MB" in judged.sentence


def test_a_window_after_ingest_ended_is_draining_not_starved():
    slow = {"frames_out": 10, "busy_s": 0.2}
    samples = timeline(ingest=FAST_INGEST, inference=slow, writer=WRITER, ingest_until=0)
    judged = verdict(samples)
    assert judged.word == "ok" and "draining" in judged.sentence


def test_the_run_is_judged_while_ingest_ran_not_during_the_drain():
    # Backlogged while ingest ran (t = 0..6); the drain after it empties Q1 and idles
    # inference, which must not turn the whole run's verdict into "ok".
    ingest = {"frames_out": 40, "source_s": 0.25, "receive_s": 0.0, "put_s": 0.75}
    busy = {"frames_out": 40, "busy_s": 1.0}
    samples = timeline(seconds=20, ingest=ingest, inference=busy, q1=QUEUE_CAPACITY, ingest_until=6)
    for sample in samples[8:]:
        sample.queues["Q1"]["depth"] = 0
    series = TimeSeries()
    for sample in samples:
        series.add(sample)
    window = streaming_window(series)
    # from the first frame out of inference to the last frame in (t = 6, before ingest ended)
    assert [s.t for s in window] == [float(t) for t in range(1, 7)]
    assert run_verdict(series).word == "backlogged"


def test_too_little_to_judge_is_none():
    assert verdict([]) is None
    assert verdict(timeline(seconds=0)) is None


def test_the_evidence_is_plain_numbers_for_report_json():
    import json

    judged = verdict(timeline(ingest=FAST_INGEST, inference=FED, writer=WRITER))
    again = json.loads(json.dumps(judged.as_dict()))
    assert again["word"] == "ok" and again["evidence"]["span_s"] == 10.0


# -- short windows, start-up and the idle tail (issue 20) -----------------------------------
def _phases(*phases: dict) -> TimeSeries:
    """Samples one second apart through consecutive phases, counters carrying on from one
    phase to the next. A phase: `seconds`, per-second counter rates per role (`ingest`,
    `inference`), `q1` (Q1's depth at the phase's samples) and `ingest_done` (ingest has ended
    by its samples)."""
    totals = {"ingest": {}, "inference": {}}
    series, t = TimeSeries(), 0

    def add(q1: int, ingest_done: bool) -> None:
        actors = {
            "ingest-0": {"role": "ingest", "phase": "done" if ingest_done else "running"},
            "inference-0": {"role": "inference", "phase": "running", "device": "cpu"},
        }
        for role in totals:
            actors[f"{role}-0"].update(totals[role])
        queue = {"depth": q1, "capacity_items": QUEUE_CAPACITY, "bytes": 0}
        series.add(Sample(t=float(t), actors=actors, queues={"Q1": queue}))

    add(0, False)
    for phase in phases:
        for _ in range(phase["seconds"]):
            t += 1
            for role in totals:
                for key, per_s in phase.get(role, {}).items():
                    totals[role][key] = totals[role].get(key, 0) + per_s
            add(phase.get("q1", 0), phase.get("ingest_done", False))
    return series


# Inference does 20 frames/s busy all the time; ingest could make 80 (it spends a quarter of
# each second making them, the rest blocked on the full Q1).
BACKLOG = {
    "seconds": 10,
    "ingest": {"frames_out": 20, "source_s": 0.25, "put_s": 0.75},
    "inference": {"frames_out": 20, "busy_s": 1.0},
    "q1": QUEUE_CAPACITY,
}


def test_the_socket_runs_idle_wait_after_its_last_frame_is_not_judged():
    # The socket recipe: Q1 sat full while data arrived (10 s), then the source waited
    # source.socket.idle_timeout_s = 30 s for more before ending; inference drained Q1 in
    # 2 s and then waited. Seen: "starved ... receive-bound" for the whole run.
    series = _phases(
        BACKLOG,
        {
            "seconds": 2,
            "inference": {"frames_out": 20, "busy_s": 1.0},
            "ingest": {"source_s": 1.0, "receive_s": 1.0},
            "q1": 4,
        },  # fmt: skip
        {"seconds": 28, "ingest": {"source_s": 1.0, "receive_s": 1.0}},
        {"seconds": 1, "ingest_done": True},
    )
    window = streaming_window(series)
    assert (window[0].t, window[-1].t) == (1.0, 10.0)  # first frame out .. last frame in
    judged = run_verdict(series)
    assert judged.word == "backlogged", judged.sentence
    assert "Q1 stayed 100% full" in judged.sentence and "receive-bound" not in judged.sentence


def test_start_up_before_the_first_frame_out_of_inference_is_not_judged():
    # The source waited 10 s for its sender to connect, then Q1 stayed full for 10 s.
    series = _phases(
        {"seconds": 10, "ingest": {"source_s": 1.0, "receive_s": 1.0}},
        BACKLOG,
        {"seconds": 1, "ingest_done": True},
    )
    assert streaming_window(series)[0].t == 11.0  # the first sample with a frame out
    assert run_verdict(series).word == "backlogged"


def _sweep_batch_16_point() -> TimeSeries:
    """The sweep's batch-16 point as its report.json showed it: one interval of 1.03 s from
    the first sample to the end (the random source had made its frames by then), ingest
    capacity 1051.9 frames/s, inference 86.9, Q1 a quarter full."""
    series = TimeSeries()
    for t, done, frames, out in ((0.0, False, 0, 0), (1.0253, True, 256, 48)):
        ingest = {"frames_out": frames, "source_s": frames / 1051.9, "put_s": 0.05 * t}
        inference = {"frames_out": out, "batches_out": out // 16, "busy_s": out / 86.9}
        series.add(
            Sample(
                t=t,
                actors={
                    "random-0": {
                        "role": "ingest",
                        "phase": "done" if done else "running",
                        **ingest,
                    },  # fmt: skip
                    "inference-0": {"role": "inference", "phase": "running", **inference},
                },
                queues={"Q1": {"depth": 4 if t else 0, "capacity_items": 16, "bytes": 0}},
            )
        )
    return series


def test_the_sweeps_one_second_point_is_too_short_to_judge():
    # Seen: "starved ... ingest is the slower side at 249.7 frames/s ... decode-bound ... add
    # ingest actors", judged over 1.0 s.
    judged = run_verdict(_sweep_batch_16_point())
    assert judged.word == "too-short", judged.sentence
    assert judged.sentence.startswith("too short to judge: 1.0 s of streaming in 1 sampling")
    # 3 batches of 0.18 s: 10 batches' time is 1.8 s
    assert "needs at least 1.8 s (1.5 s, 10 inference batches' time) and 2" in judged.sentence
    assert "ingest is the slower side" not in judged.sentence
    assert judged.evidence["ingest_capacity_fps"] == 1051.9  # the evidence is still there


def test_ingest_is_never_named_the_slower_side_when_it_delivered_more_than_inference_takes():
    # The sweep point's rates held for 10 s: ingest delivered 249.7 frames/s, inference can
    # take 86.9 at most, yet it waited 45% of its time (start-up, its own fetching): ingest is
    # not the slower side, inference is.
    ingest = {"frames_out": 249.7, "source_s": 249.7 / 1051.9, "receive_s": 0.0, "put_s": 0.05}
    inference = {"frames_out": 47.8, "busy_s": 47.8 / 86.9}
    judged = verdict(timeline(ingest=ingest, inference=inference, writer=WRITER, q1=4))
    assert "ingest is the slower side" not in judged.sentence, judged.sentence
    assert judged.word == "backlogged"
    assert "inference is the slower side" in judged.sentence
    assert "ingest delivered 249.7 frames/s" in judged.sentence
    assert "inference can take at most 86.9 frames/s" in judged.sentence


def test_a_starved_verdict_agrees_with_the_capacities_it_reports():
    # Put-bound: ingest makes frames at 50 frames/s but delivers 10; inference could take 40.
    ingest = {"frames_out": 10, "source_s": 0.2, "receive_s": 0.0, "put_s": 0.8}
    judged = verdict(timeline(ingest=ingest, inference={"frames_out": 10, "busy_s": 0.25}))
    assert judged.word == "starved"
    e = judged.evidence
    assert e["ingest_fps"] < e["inference_capacity_fps"] < e["ingest_capacity_fps"]
    assert "it delivered 10.0 frames/s where inference could take 40.0" in judged.sentence
    assert "making frames alone it could deliver 50.0 frames/s" in judged.sentence


def test_the_live_verdict_says_too_short_until_the_window_spans_enough():
    from peaknet_pipeline.monitor import verdict as v

    short = verdict(timeline(seconds=1, ingest=FAST_INGEST, inference=FED, writer=WRITER))
    assert short.word == "too-short" and short.sentence.startswith("too short to judge")
    assert f"at least {v.MIN_SPAN_S:.1f} s ({v.MIN_SPAN_S:g} s) and 2 intervals" in short.sentence
    # Slow batches need a longer window: 2 s holds only 2 batches of 0.95 s.
    slow = dict(FED, batches_out=1)
    judged = verdict(timeline(seconds=2, ingest=FAST_INGEST, inference=slow, writer=WRITER))
    assert judged.word == "too-short" and "needs at least 9.5 s" in judged.sentence
    series = TimeSeries()
    for sample in timeline(seconds=30, ingest=FAST_INGEST, inference=FED, writer=WRITER):
        series.add(sample)
    judged = v.live_verdict(series)
    assert judged.word == "ok" and judged.evidence["span_s"] == v.LIVE_WINDOW_S


# -- advice the machine can follow (issue 20, point 6) --------------------------------------
# Ingest could deliver 280 frames/s, inference does 20: 14x would keep up.
FAR_BEHIND = {"frames_out": 20, "source_s": 20 / 280, "receive_s": 0.0, "put_s": 0.9}


def _far_behind(room=None, device="cpu"):
    samples = timeline(ingest=FAR_BEHIND, inference={"frames_out": 20, "busy_s": 1.0},
                       writer=WRITER, q1=QUEUE_CAPACITY)  # fmt: skip
    for sample in samples:
        sample.actors["inference-0"]["device"] = device
    return verdict(samples, room) if room is not None else verdict(samples)


def test_without_knowing_the_machine_the_advice_scales_by_the_capacity_ratio():
    assert "inference.num_actors 1 -> 14" in _far_behind().sentence


def test_on_a_machine_with_no_room_for_another_actor_the_machine_is_the_limit():
    from peaknet_pipeline.monitor.verdict import Room

    # The demo on a 2-core laptop: Ray declares 3 CPUs, ingest and the writer reserve 1.5.
    judged = _far_behind(Room(inference_actors=1, cpus=3.0, gpus=0.0))
    assert judged.word == "backlogged"
    assert "-> 14" not in judged.sentence and "num_actors 1 ->" not in judged.sentence
    assert "the machine is the limit" in judged.sentence
    assert "holds at most 1 inference actor (3 CPUs" in judged.sentence


def test_the_advice_stops_at_what_the_machine_holds():
    from peaknet_pipeline.monitor.verdict import Room

    judged = _far_behind(Room(inference_actors=6, cpus=8.0, gpus=0.0))
    assert "inference.num_actors 1 -> 6" in judged.sentence and "-> 14" not in judged.sentence
    assert "holds at most 6 inference actors" in judged.sentence
    assert "beyond that the machine is the limit" in judged.sentence


@pytest.mark.parametrize(
    ("resources", "overrides", "actors", "gpus"),
    [
        ({"CPU": 3.0}, {}, 1, 0.0),  # the demo on 2 cores: ingest 0.5 + writer 1 + 1 inference
        ({"CPU": 16.0}, {}, 14, 0.0),
        ({"CPU": 16.0, "GPU": 2.0}, {}, 2, 2.0),  # one GPU per actor: the GPUs are the limit
        ({"CPU": 16.0, "GPU": 2.0}, {"num_gpus_per_actor": 0.5}, 4, 2.0),
        ({"CPU": 16.0, "GPU": 2.0}, {"device": "cpu"}, 14, 2.0),  # CPU actors ignore GPUs
    ],
)
def test_the_room_for_inference_actors_is_what_ray_has_left_after_ingest_and_writers(
    resources, overrides, actors, gpus
):
    from peaknet_pipeline.config import PipelineConfig
    from peaknet_pipeline.monitor.verdict import inference_room

    cfg = PipelineConfig.model_validate({"inference": overrides})
    room = inference_room(cfg, resources)
    assert (room.inference_actors, room.cpus, room.gpus) == (actors, resources["CPU"], gpus)


def test_on_kubernetes_the_pool_grows_with_pods_so_no_machine_limit_is_claimed():
    from peaknet_pipeline.config import PipelineConfig
    from peaknet_pipeline.monitor.verdict import inference_room

    assert inference_room(PipelineConfig(), {"CPU": 4.0, "peaknet_infer": 1.0}) is None


# -- the CPU demo (issue 20, point 11) ------------------------------------------------------
def test_backlogged_on_the_cpu_says_it_is_expected_and_what_it_would_mean_on_a_gpu():
    judged = _far_behind(device="cpu")
    assert "expected when inference runs on the CPU (as in the CPU demo)" in judged.sentence
    assert "On a GPU it would mean the GPUs do not keep up with ingest" in judged.sentence
    on_gpu = _far_behind(device="cuda:0")
    assert on_gpu.word == "backlogged" and "expected" not in on_gpu.sentence


def test_the_runs_verdict_and_the_live_one_take_the_machines_room_from_the_series():
    from peaknet_pipeline.monitor.verdict import Room, live_verdict

    series = TimeSeries(room=Room(inference_actors=1, cpus=3.0, gpus=0.0))
    busy = {"frames_out": 20, "busy_s": 1.0}
    for sample in timeline(ingest=FAR_BEHIND, inference=busy, writer=WRITER, q1=QUEUE_CAPACITY):
        series.add(sample)
    assert "the machine is the limit" in run_verdict(series).sentence
    assert "the machine is the limit" in live_verdict(series).sentence
