"""The writer under runtime.service: one folder per DAQ run, closed once quiet (Ray-free).

The clock that times a DAQ run's quiet is injected: nothing here sleeps.
"""

from __future__ import annotations

import functools
import json
import os
import threading

import h5py
import numpy as np
import pytest

from peaknet_pipeline.config import PipelineConfig, WriterConfig
from peaknet_pipeline.queue import EndOfStream
from peaknet_pipeline.records import Batch, Result
from peaknet_pipeline.stats import DaqRunState
from peaknet_pipeline.writer import WriterStage, daq_run_label, merge_daq_run
from peaknet_pipeline.writer.daqrun import CLOSED_KEPT
from peaknet_pipeline.writer.ledger import read_ledger
from peaknet_pipeline.writer.summary import write_daq_run_summary

C, H, W = 1, 12, 12


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_result(seq: int, label, n_peaks=(4, 0, 5), source: str = "src-a"):
    """A Result of len(n_peaks) events (each with that many 1-pixel peaks), all of DAQ run
    `label` (a list: one label per event; None: no daq_run field)."""
    b = len(n_peaks)
    images = np.ones((b, C, H, W), np.float32)
    masks = np.zeros((b, C, H, W), np.uint8)
    for i, n in enumerate(n_peaks):
        for k in range(n):
            masks[i, 0, 2 * k, 2 * (k % 3)] = 1
    meta = {"photon_energy_ev": np.full(b, 9500.0)}
    if label is not None:
        meta["daq_run"] = np.array(label if isinstance(label, list) else [label] * b)
    batch = Batch.describe(images, meta, source, seq)
    return Result(batch, "mask", masks.shape, "|u1", "inference-0"), images, masks


def stage(tmp_path, clock: Clock, index: int = 0, **kw) -> WriterStage:
    cfg = WriterConfig(**{"min_peaks": 3, "max_peaks": 8, "daq_run_close_s": 3.0, **kw})
    return WriterStage(cfg, str(tmp_path), index, clock=clock, wall=clock)


def write(st: WriterStage, seq: int, label, **kw) -> Result:
    result, images, masks = make_result(seq, label, **kw)
    st.process(result, images, masks)
    return result


def names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def open_h5_files() -> list[str]:
    ids = h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)
    return [fid.name.decode() for fid in ids]


def states(st: WriterStage) -> dict[str, DaqRunState]:
    runs = st.stats()["daq_runs"]
    assert len({s.label for s in runs}) == len(runs)  # each label once
    return {s.label: s for s in runs}


def test_each_daq_run_gets_its_own_folder_files_geometry_and_summary(tmp_path):
    clock = Clock()
    st = stage(tmp_path, clock)
    for seq, label in enumerate(["cxi1-r0001", "cxi1-r0002", "cxi1-r0001"]):
        write(st, seq, label)
    keys = st.finish()
    assert sorted(keys) == [("src-a", 0), ("src-a", 1), ("src-a", 2)]
    assert names(tmp_path) == ["cxi1-r0001", "cxi1-r0002"]  # nothing at the top
    for label, seqs in (("cxi1-r0001", {0, 2}), ("cxi1-r0002", {1})):
        folder = tmp_path / label
        assert names(folder) == ["peaknet-w00-0000.cxi", "peaknet.geom", "summary-writer-0.json"]
        cxi = folder / "peaknet-w00-0000.cxi"
        with h5py.File(cxi, "r") as f:  # never two DAQ runs in one file
            assert set(f["/LCLS/daq_run"].asstr()[:]) == {label}
        assert {seq for _, seq in read_ledger(cxi)[0]} == seqs
        part = json.loads((folder / "summary-writer-0.json").read_text())
        assert part["daq_run"] == label and part["events"] == 3 * len(seqs)
        assert part["hits"] == 2 * len(seqs) and part["accounted"]
    assert st.summary()["events"] == 9 and st.summary()["files"] == []  # in the folders
    assert {s.state for s in states(st).values()} == {"closed"}
    # A finished writer's summary is its last counts: it says the runs it had open are closed.
    last_word = {s["label"]: s for s in st.summary()["daq_runs"]}
    assert last_word["cxi1-r0001"]["state"] == "closed" and last_word["cxi1-r0001"]["frames"] == 6
    assert last_word["cxi1-r0002"]["state"] == "closed" and last_word["cxi1-r0002"]["frames"] == 3


def test_without_daq_run_nothing_changes(tmp_path):
    st = stage(tmp_path, Clock())
    write(st, 0, None)
    st.finish()
    assert names(tmp_path) == ["peaknet-w00-0000.cxi", "peaknet.geom"]
    assert st.stats()["daq_runs"] == () and "daq_run_parts" not in st.summary()
    assert [os.path.basename(f["path"]) for f in st.summary()["files"]] == ["peaknet-w00-0000.cxi"]


@pytest.mark.parametrize(
    "label, why",
    [(["r1", "r1", "r2"], "events of 2 DAQ runs"), ("../up", "not a folder name")],
)
def test_a_result_naming_two_daq_runs_or_no_folder_is_refused_and_counted(tmp_path, label, why):
    st = stage(tmp_path, Clock())
    result = write(st, 0, label)
    with pytest.raises(ValueError, match=why):
        daq_run_label(result.batch.meta)
    assert st.summary()["failed"] == {"daq_run_refused": 3} and st.summary()["accounted"]
    assert st.finish() == [result.key]  # settled, not stranded
    assert names(tmp_path) == []  # no folder made for it


def test_a_quiet_daq_run_closes_after_daq_run_close_s_and_releases_its_file(tmp_path):
    clock = Clock()
    st = stage(tmp_path, clock)
    a = write(st, 0, "r0001")
    clock.t += 2.0
    b = write(st, 1, "r0002")
    clock.t += 0.9  # r0001 quiet 2.9 s: still open
    st.close_quiet()
    assert st.committed() == [] and states(st)["r0001"].state == "open"
    assert any("r0001" in path for path in open_h5_files())
    clock.t += 0.1  # 3.0 s: the idle tick closes it
    st.close_quiet()
    assert st.committed() == [a.key]
    assert names(tmp_path / "r0001") == [
        "peaknet-w00-0000.cxi",
        "peaknet.geom",
        "summary-writer-0.json",
    ]
    assert not [path for path in open_h5_files() if "r0001" in path]
    assert states(st)["r0001"] == DaqRunState("r0001", "closed", 3, 2, 1000.0, 1000.0, 1)
    assert states(st)["r0002"].state == "open"
    clock.t += 3.0  # checked on every Result too: r0003's first closes r0002
    write(st, 2, "r0003")
    assert st.committed() == [b.key]
    st.finish()
    assert not open_h5_files()


def test_a_daq_run_of_non_hits_only_commits_in_a_file_without_rows(tmp_path):
    clock = Clock()
    st = stage(tmp_path, clock)
    result = write(st, 0, "dark", n_peaks=(0, 1))
    clock.t += 3.0
    st.close_quiet()
    assert st.committed() == [result.key]
    cxi = tmp_path / "dark" / "peaknet-w00-0000.cxi"
    assert read_ledger(cxi)[0] == {result.key}
    assert (tmp_path / "dark" / "peaknet.geom").exists()  # the folder has its geometry


def test_a_straggler_reopens_its_run_in_a_new_file_of_the_same_folder_and_is_counted(tmp_path):
    clock = Clock()
    st = stage(tmp_path, clock)
    first = write(st, 0, "r7")
    clock.t += 5.0
    st.close_quiet()
    assert st.committed() == [first.key]
    late = write(st, 1, "r7")
    assert st.stats()["daq_run_stragglers"] == 3
    assert states(st)["r7"].state == "open" and states(st)["r7"].frames == 6
    clock.t += 3.0
    st.close_quiet()
    assert st.committed() == [late.key]
    folder = tmp_path / "r7"
    assert names(folder) == [
        "peaknet-w00-0000.cxi",
        "peaknet-w00-0001.cxi",
        "peaknet.geom",
        "summary-writer-0.json",
        "summary-writer-0_2.json",
    ]
    assert read_ledger(folder / "peaknet-w00-0001.cxi")[0] == {late.key}
    assert states(st)["r7"] == DaqRunState("r7", "closed", 6, 4, 1000.0, 1005.0, 2)
    doc = write_daq_run_summary(folder)
    assert doc["events"] == 6 and doc["parts"] == 2
    assert doc["notes"] == {"daq_run_stragglers": 3}
    assert json.loads((folder / "summary.json").read_text()) == doc


def test_nothing_the_writer_keeps_grows_with_the_number_of_daq_runs(tmp_path):
    clock = Clock()
    st = stage(tmp_path, clock)
    threads = threading.active_count()
    for seq in range(3 * CLOSED_KEPT):
        write(st, seq, f"r{seq:04d}")
        clock.t += 3.0
        st.close_quiet()
        assert len(st.committed()) == 1
    assert len(st.daq_runs.open) == 0 and len(st.daq_runs.closed) == CLOSED_KEPT
    assert [s.label for s in st.stats()["daq_runs"]] == [
        f"r{seq:04d}" for seq in range(2 * CLOSED_KEPT, 3 * CLOSED_KEPT)
    ]
    assert st.series.files == [] and st._settled == []
    assert not open_h5_files() and threading.active_count() == threads
    assert st.summary()["daq_run_parts"] == 3 * CLOSED_KEPT
    assert st.stats()["files_closed"] == 3 * CLOSED_KEPT


def test_two_writers_summary_parts_merge_per_folder(tmp_path):
    clock = Clock()
    writers = [stage(tmp_path, clock, index) for index in (0, 1)]
    for index, st in enumerate(writers):
        write(st, index, "r0042", source=f"src-{index}")
        st.finish()
    folder = tmp_path / "r0042"
    assert [n for n in names(folder) if n.startswith("summary")] == [
        "summary-writer-0.json",
        "summary-writer-1.json",
    ]
    doc = merge_daq_run(folder)
    assert doc["daq_run"] == "r0042" and doc["writers"] == ["writer-0", "writer-1"]
    assert doc["events"] == 6 and doc["hits"] == 4 and doc["accounted"]
    assert [os.path.basename(f["path"]) for f in doc["files"]] == [
        "peaknet-w00-0000.cxi",
        "peaknet-w01-0000.cxi",
    ]


def test_a_result_delivered_again_is_found_in_its_daq_runs_ledgers(tmp_path):
    clock = Clock()
    first = stage(tmp_path, clock, 0)
    result = write(first, 0, "r0005")
    first.commit_now()  # committed in a closed file, then its writer died before the ack
    second = stage(tmp_path, clock, 1)
    assert second.committed_before(result)
    assert not second.committed_before(make_result(1, "r0005")[0])
    assert not second.committed_before(make_result(0, "r0006")[0])


class FakeQ2:
    """A consumer client with one Result to hand out, then quiet until `end` is set."""

    name = "run-q2"

    def __init__(self, results: list[Result]) -> None:
        self.results, self.end, self.acked = list(results), threading.Event(), threading.Event()
        self.keys: list = []

    def with_home(self, index):
        return self

    def as_consumer(self, consumer):
        return self

    def get_many(self, n, timeout=None):
        if self.results:
            return [self.results.pop(0)]
        self.end.wait()
        raise EndOfStream("end")

    def ack(self, results):
        self.keys += [r.key for r in results]
        if results:
            self.acked.set()

    def flush_acks(self):
        pass

    def previous_consumers(self, result):
        return []


def test_a_quiet_writer_closes_its_daq_run_on_its_idle_tick(tmp_path, monkeypatch):
    from peaknet_pipeline.queue import QueueConsumer
    from peaknet_pipeline.writer import actor as actor_module

    result, images, masks = make_result(0, "r0009")
    q2 = FakeQ2([result])
    fetched = functools.partial(QueueConsumer, get=lambda refs, timeout: [images, masks])
    monkeypatch.setattr(actor_module, "QueueConsumer", fetched)
    cfg = PipelineConfig.model_validate({"writer": {"min_peaks": 3, "daq_run_close_s": 3.0}})
    writer = actor_module.WriterActor(cfg, q2, str(tmp_path), "cafe", 0)
    clock = Clock()
    writer.stage.daq_runs.clock = clock
    handled, process = threading.Event(), writer.stage.process
    writer.stage.process = lambda *args: (process(*args), handled.set())
    result.batch.images, result.output = "images-ref", "output-ref"
    done = {}
    thread = threading.Thread(target=lambda: done.update(writer.run()), daemon=True)
    thread.start()
    try:
        assert handled.wait(10)  # the Result is written; Q2 is quiet from now on
        clock.t += 3.0  # no Result comes: only the loop's tick can close r0009
        assert q2.acked.wait(10 * writer.tick_s), "r0009 not closed while Q2 was quiet"
        assert q2.keys == [result.key]
        assert (tmp_path / "r0009" / "summary-writer-0.json").exists()
    finally:
        q2.end.set()
        thread.join(10)
    assert done["events"] == 3 and done["daq_run_parts"] == 1
