"""DAQ run boundaries at ingest (issue 23, item 2), Ray-free: the labels, where messages are
cut, the service's waiting lines, and what `push --daq-runs` puts into its messages."""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

import numpy as np
import pytest

from peaknet_pipeline.config import PipelineConfig, SocketSourceConfig
from peaknet_pipeline.sources.daq_run import (
    LABEL,
    DaqRunState,
    field_labels,
    gap_label,
    label_message,
    run_info_label,
    run_number_label,
    safe_part,
    segments,
)
from peaknet_pipeline.sources.push import add_push_arguments, messages, wire_config
from peaknet_pipeline.sources.push_runs import check_daq_run_options, run_field_values
from peaknet_pipeline.sources.socket import service_waiting_due
from peaknet_pipeline.sources.wire import DAQ_RUN_FIELD, Decoder, WireError, encode

T0 = datetime(2026, 12, 6, 16, 19, 0, tzinfo=timezone.utc).timestamp()


def run_info(experiment: str, run: int, count: int, start: str = "1796573940") -> np.ndarray:
    """What LCLStreamer's Psana2RunInfo gives per event, `count` times."""
    return np.array([[experiment, start, str(run), f"exp={experiment},run={run}"]] * count)


# -- labels ------------------------------------------------------------------------------------
def test_labels_name_folders_from_run_info_a_run_number_or_the_first_frame_time():
    assert run_info_label("cxi12345", "12") == "cxi12345-r0012"
    assert run_number_label(12) == "r0012" and run_number_label(123456) == "r123456"
    assert gap_label(T0) == "run-20261206T161900Z"
    assert gap_label(T0 + 0.999) == "run-20261206T161900Z"


@pytest.mark.parametrize(
    "experiment, run",
    [("../etc", "7"), ("cxi 123/45", "x y"), ("", ""), (".hidden", "1"), ("ü", "0012")],
)
def test_every_label_is_a_valid_folder_name_whatever_the_stream_says(experiment, run):
    label = run_info_label(experiment, run)
    assert LABEL.match(label) and not label.startswith("."), label
    assert "/" not in label and label not in (".", "..")
    assert safe_part("..") == "unknown"


def test_field_labels_read_run_info_rows_and_integer_run_numbers():
    assert field_labels(run_info("cxi12345", 12, 2)) == ["cxi12345-r0012"] * 2
    assert field_labels(np.array([3, 3, 4], dtype=np.int32)) == ["r0003", "r0003", "r0004"]
    assert field_labels(np.array([5.0, 6.0])) == ["r0005", "r0006"]
    # The source identifier differs between streamer ranks: not part of the DAQ run.
    rows = run_info("cxi12345", 12, 2)
    rows[1, 3] = "another rank"
    assert field_labels(rows) == ["cxi12345-r0012"] * 2
    for bad in (np.array([1.5]), np.array(["12"]), np.zeros((2, 3), dtype=str)):
        with pytest.raises(ValueError, match="run_info strings"):
            field_labels(bad)


# -- boundaries --------------------------------------------------------------------------------
def test_segments_cut_where_the_label_changes():
    assert segments(["a", "a", "b", "b", "b", "a"]) == [("a", 0, 2), ("b", 2, 5), ("a", 5, 6)]
    assert segments(["a"]) == [("a", 0, 1)]


def test_a_pause_longer_than_gap_s_starts_a_new_daq_run_and_shorter_ones_do_not():
    """Messages arriving (quiet seconds before each, UTC time) -> their labels, gap_s 10."""
    arrivals = [(0.0, T0), (0.1, T0 + 1), (9.9, T0 + 11), (10.5, T0 + 22), (0.2, T0 + 23)]
    state, labels = DaqRunState(), []
    for quiet, wall in arrivals:
        state, cuts = label_message(state, 4, None, quiet, wall, gap_s=10.0)
        assert len(cuts) == 1 and cuts[0][1:] == (0, 4)  # a whole message is one run
        labels.append(cuts[0][0])
    first, second = gap_label(T0), gap_label(T0 + 22)
    assert labels == [first, first, first, second, second]


def test_two_gap_runs_starting_in_the_same_second_get_different_labels():
    state, _ = label_message(DaqRunState(), 1, None, 0.0, T0 + 0.1, gap_s=0.2)
    state, (b,) = label_message(state, 1, None, 0.3, T0 + 0.5, gap_s=0.2)
    state, (c,) = label_message(state, 1, None, 0.3, T0 + 0.9, gap_s=0.2)
    assert [b[0], c[0]] == [f"{gap_label(T0)}-2", f"{gap_label(T0)}-3"]
    assert all(LABEL.match(x[0]) for x in (b, c))


def test_a_run_field_decides_alone_and_a_message_holding_two_runs_is_cut():
    rows = np.concatenate([run_info("cxi12345", 12, 3), run_info("cxi12345", 13, 5)])
    state, cuts = label_message(DaqRunState(), 8, rows, 0.0, T0, gap_s=10.0)
    assert cuts == [("cxi12345-r0012", 0, 3), ("cxi12345-r0013", 3, 8)]
    # A long pause inside one run does not split it when the stream names its runs.
    state, cuts = label_message(state, 2, run_info("cxi12345", 13, 2), 3600.0, T0, 10.0)
    assert cuts == [("cxi12345-r0013", 0, 2)]


def test_a_service_says_it_waits_after_10_s_then_every_60_s_never_each_poll():
    said, lines = 0, []
    for idle in np.arange(0.0, 200.0, 0.1):  # one poll every 0.1 s for 200 s of silence
        if service_waiting_due(float(idle), said):
            said += 1
            lines.append(round(float(idle)))
    assert lines == [10, 70, 130, 190]


# -- config ------------------------------------------------------------------------------------
def test_service_and_daq_run_settings_and_their_defaults():
    cfg = PipelineConfig()
    assert cfg.runtime.service is False
    assert cfg.source.socket.daq_run.field is None and cfg.source.socket.daq_run.gap_s == 10.0
    cfg = PipelineConfig.model_validate(
        {
            "runtime": {"service": True},
            "source": {"socket": {"daq_run": {"field": "run_info", "gap_s": 2}}},
        }
    )
    assert cfg.runtime.service and cfg.source.socket.daq_run.field == "run_info"
    with pytest.raises(ValueError):
        SocketSourceConfig.model_validate({"daq_run": {"gap_s": 0}})


# -- the wire and push -------------------------------------------------------------------------
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_push_arguments(parser)
    return parser.parse_args(list(argv))


def test_push_refuses_run_info_with_hdf5_naming_the_option():
    problem = check_daq_run_options(_args("--daq-run-field", "run_info"))
    assert problem.startswith("--daq-run-field run_info needs --format npz")
    assert "h5py" in problem
    assert check_daq_run_options(_args("--daq-run-field", "run_number")) is None
    assert check_daq_run_options(_args("--format", "npz", "--daq-run-field", "run_info")) is None
    assert "--num-frames" in check_daq_run_options(_args("--daq-runs", "2", "--num-frames", "0"))
    assert "--pool" in check_daq_run_options(_args("--daq-runs", "2", "--pool", "2"))


def test_push_builds_run_info_rows_and_run_numbers_per_event():
    rows = run_field_values("run_info", 3, 12, "cxi12345", T0 + 0.7)
    assert rows.shape == (3, 4) and rows.dtype.kind == "U"
    assert rows[0].tolist() == ["cxi12345", str(int(T0)), "12", "exp=cxi12345,run=12"]
    numbers = run_field_values("run_number", 3, 12, "cxi12345", T0)
    assert numbers.tolist() == [12, 12, 12] and numbers.dtype == np.int64
    assert run_field_values("none", 3, 12, "cxi12345", T0) is None


@pytest.mark.parametrize("fmt, field", [("npz", "run_info"), ("npz", "run_number"),
                                        ("hdf5", "run_number"), ("hdf5", "none")])  # fmt: skip
def test_push_sends_each_daq_run_in_its_own_messages_the_pipeline_labels_them(fmt, field):
    args = _args(
        "--format", fmt, "--daq-run-field", field, "--daq-runs", "3", "--daq-run-first", "11",
        "--num-frames", "6", "--batch-size", "4", "--shape", "8", "8", "--peaks-per-frame", "0",
    )  # fmt: skip
    decode = Decoder(wire_config(fmt, field))
    sent = list(messages(args, stream=1))
    assert [(n, run) for _, n, run in sent] == [(4, 0), (2, 0), (4, 1), (2, 1), (4, 2), (2, 2)]
    ids = []
    for buf, n, run in sent:
        _, meta = decode(buf)
        ids += meta["event_id"].tolist()
        if field == "none":
            assert DAQ_RUN_FIELD not in meta
            continue
        want = f"cxi12345-r{11 + run:04d}" if field == "run_info" else f"r{11 + run:04d}"
        assert field_labels(meta[DAQ_RUN_FIELD]) == [want] * n
    assert ids == list(range(18, 36))  # stream 1 of 1 x 6 frames x 3 runs: unique ids


def test_a_daq_runs_first_message_is_made_after_the_pause_before_it():
    """Its timestamps and its run start time say when it was sent, not when the last
    message of the run before it was: the pause comes before it is made."""
    args = _args(
        "--format", "npz", "--daq-run-field", "run_info", "--daq-runs", "2",
        "--num-frames", "4", "--batch-size", "4", "--shape", "8", "8", "--peaks-per-frame", "0",
    )  # fmt: skip
    decode = Decoder(wire_config("npz", "run_info"))
    paused: list[tuple[int, int, float]] = []
    made: list[tuple[int, float, float]] = []

    def pause(last: int, run: int) -> bool:
        paused.append((last, run, time.time()))
        return True

    for buf, _, run in messages(args, stream=0, before_run=pause):
        _, meta = decode(buf)
        started = float(meta[DAQ_RUN_FIELD][0][1])  # run_info's run start time, in seconds
        made.append((run, float(meta["timestamp"][0]), started))
    [(last, run, at)] = paused
    assert (last, run) == (0, 1) and [r for r, _, _ in made] == [0, 1]
    assert made[1][1] >= at and made[1][2] >= int(at)  # after the pause, not before it
    assert made[0][1] < at
    stopped = list(messages(args, stream=0, before_run=lambda last, run: False))
    assert [run for _, _, run in stopped] == [0]  # False at the pause ends the stream


def test_the_decoder_rejects_a_missing_or_unreadable_run_field_as_a_bad_message():
    cfg = wire_config("npz", "run_info")
    frames = np.zeros((2, 1, 8, 8), dtype=np.float32)
    meta = {"timestamp": np.zeros(2), "wavelength_nm": np.ones(2), "event_id": np.arange(2)}
    with pytest.raises(WireError) as missing:
        Decoder(cfg)(encode(frames, meta, wire_config("npz")))
    assert missing.value.kind == "missing_field" and "run_info" in str(missing.value)
    bad = {**meta, DAQ_RUN_FIELD: np.array([["a", "b", "c"]] * 2)}
    with pytest.raises(WireError) as unreadable:
        Decoder(cfg)(encode(frames, bad, cfg))
    assert unreadable.value.kind == "bad_dtype" and "DAQ run field 'run_info'" in str(
        unreadable.value
    )
