"""The service's DAQ-run tracker (monitor/daqruns.py), Ray-free: which DAQ runs the writers'
states make due, a straggler, the folder's files and the index, written atomically."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from peaknet_pipeline.monitor import daqruns
from peaknet_pipeline.monitor.daqruns import (
    DaqRunTracker,
    Seen,
    as_seen,
    observe,
    span_samples,
    write_atomic,
    writer_states,
)
from peaknet_pipeline.monitor.timeseries import Sample, TimeSeries
from peaknet_pipeline.writer.ledger import LedgerEntry
from peaknet_pipeline.writer.series import CxiSeries

PREFIX = "peaknet"
T0 = 1_765_000_000.0  # a wall time in 2025


@dataclass(frozen=True)
class State:  # the shape of stats.DaqRunState (engineer B's), as a test double
    label: str
    state: str
    frames: int = 0
    hits: int = 0
    first_t: float | None = None
    last_t: float | None = None
    files: tuple[str, ...] = ()


def _writer(actor_id: str, *states: State, phase: str = "running") -> dict:
    return {"role": "writer", "actor_id": actor_id, "phase": phase, "daq_runs": list(states)}


def _sample(*writers: dict, t: float = 0.0) -> Sample:
    return Sample(t=t, actors={w["actor_id"]: w for w in writers})


def _files(
    folder: Path,
    consumer: str,
    index: int,
    events: int,
    hits: int,
    part: int | None = 1,
    span: tuple[float, float] = (T0, T0 + 1),
) -> None:
    """A writer's closed file in a DAQ run's folder, with the ledger the real writer writes
    (CxiSeries): `events` handled, `hits` of them hits, no rows; and, unless `part` is None
    (a writer that died before closing the run), its part of the run's summary in the shape
    writer/daqrun.py writes (`summary-<consumer>[_N].json`)."""
    series = CxiSeries(str(folder), PREFIX, index, 100, 8, consumer=consumer)
    counts = Counter(events=events, hits=hits, non_hits=events - hits)
    series.record(LedgerEntry(f"src-{index}", part or 0, counts))
    series.close_file(force=True)
    if part is None:
        return
    name = f"summary-{consumer}.json" if part == 1 else f"summary-{consumer}_{part}.json"
    doc = {
        "daq_run": folder.name,
        "writer": index,
        "consumer": consumer,
        "part": part,
        **counts,
        "failed": {},
        "accounted": True,
        "notes": {},
        "files": series.files,
        "first_t": span[0],
        "last_t": span[1],
    }
    (folder / name).write_text(json.dumps(doc))


def test_a_run_is_due_once_closed_in_every_writer_that_saw_it():
    runs: dict = {}
    a_open = State("r0001", "open", 4, 1, T0, T0 + 1)
    b_closed = State("r0001", "closed", 6, 2, T0, T0 + 2)
    assert observe(runs, writer_states([_writer("writer-0", a_open), _writer("writer-1")])) == []
    both = [_writer("writer-0", a_open), _writer("writer-1", b_closed)]
    assert observe(runs, writer_states(both)) == []  # open in writer-0
    a_closed = State("r0001", "closed", 4, 1, T0, T0 + 1)
    both = [_writer("writer-0", a_closed), _writer("writer-1", b_closed)]
    assert observe(runs, writer_states(both)) == ["r0001"]


def test_a_failed_writers_open_run_is_not_waited_for():
    """Its .part never closes; what it had not committed goes to another writer."""
    runs: dict = {}
    dead = _writer("writer-0", State("r0002", "open", 3, 0, T0, T0 + 1), phase="failed")
    alive = _writer("writer-1", State("r0002", "closed", 5, 1, T0, T0 + 3))
    assert observe(runs, writer_states([dead, alive])) == ["r0002"]


def test_due_runs_come_in_the_order_of_their_first_frames_and_each_once():
    runs: dict = {}
    later = State("run-b", "closed", 2, 0, T0 + 50, T0 + 60)
    earlier = State("run-a", "closed", 2, 0, T0, T0 + 10)
    states = writer_states([_writer("writer-0", later, earlier)])
    assert observe(runs, states) == ["run-a", "run-b"]
    for label in ("run-a", "run-b"):
        runs[label].done = runs[label].fingerprint()
    assert observe(runs, states) == []


def test_states_as_records_or_as_dicts_read_the_same():
    record = State("r0003", "closed", 7, 2, T0, T0 + 4, ("a.cxi", "b.cxi"))
    as_dict = {**vars(record), "files": list(record.files)}
    assert as_seen(record) == as_seen(as_dict) == ("r0003", Seen("closed", 7, 2, T0, T0 + 4, 2))


def test_a_finalised_run_no_writer_lists_is_forgotten_but_stays_in_the_index(tmp_path):
    tracker = DaqRunTracker(tmp_path, "svc", PREFIX, pages=False)
    tracker.update(_sample(_writer("writer-0", State("r0001", "closed", 1, 0, T0, T0))))
    tracker.update(_sample(_writer("writer-0")))
    assert tracker.runs == {} and list(tracker.index) == ["r0001"]


def test_finalising_writes_the_folder_then_the_index(tmp_path):
    folder = tmp_path / "cxi12345-r0012"
    last = time.time() - 1.0
    _files(folder, "writer-0", 0, events=10, hits=3, span=(last - 5, last - 2))
    _files(folder, "writer-1", 1, events=6, hits=1, span=(last - 4, last))
    tracker = DaqRunTracker(tmp_path, "svc", PREFIX, pages=False)
    states = [
        _writer("writer-0", State("cxi12345-r0012", "closed", 10, 3, last - 5, last - 2)),
        _writer("writer-1", State("cxi12345-r0012", "closed", 6, 1, last - 4, last)),
    ]
    assert tracker.update(_sample(*states)) == ["cxi12345-r0012"]
    summary = json.loads((folder / "summary.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    index = json.loads((tmp_path / "index.json").read_text())
    assert summary["events"] == 16 and summary["hits"] == 4 and summary["complete"] is True
    assert len(summary["files"]) == 2 and summary["accounted"]
    assert report["frames"] == 16 and report["hits"] == 4 and report["hit_rate"] == 0.25
    assert report["first_t"] == last - 5 and report["last_t"] == last
    assert report["duration_s"] == 5.0 and len(report["files"]) == 2
    assert 1.0 <= report["complete_after_s"] < 30.0
    assert index["runs"] == [daqruns.index_entry(report)]
    assert index["runs"][0]["folder"] == "cxi12345-r0012"
    html = (tmp_path / "index.html").read_text()
    assert '<a href="cxi12345-r0012/report.html">cxi12345-r0012</a>' in html
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_straggler_finalises_its_run_again(tmp_path):
    folder = tmp_path / "r0005"
    _files(folder, "writer-0", 0, events=8, hits=2, span=(T0, T0 + 5))
    tracker = DaqRunTracker(tmp_path, "svc", PREFIX, pages=False)
    first = State("r0005", "closed", 8, 2, T0, T0 + 5)
    assert tracker.update(_sample(_writer("writer-0", first))) == ["r0005"]
    assert tracker.update(_sample(_writer("writer-0", first))) == []
    reopened = State("r0005", "open", 9, 2, T0, T0 + 20)
    assert tracker.update(_sample(_writer("writer-0", reopened))) == []
    _files(folder, "writer-0", 0, events=1, hits=0, part=2, span=(T0 + 20, T0 + 20))
    again = State("r0005", "closed", 9, 2, T0, T0 + 20)
    assert tracker.update(_sample(_writer("writer-0", again))) == ["r0005"]
    report = json.loads((folder / "report.json").read_text())
    entry = json.loads((tmp_path / "index.json").read_text())["runs"]
    assert report["frames"] == 9 and report["end"] == daqruns.iso(T0 + 20)
    assert report["finalised"] == 2 and len(entry) == 1 and entry[0]["frames"] == 9


def test_the_index_lists_every_run_newest_first_and_survives_a_restart(tmp_path):
    tracker = DaqRunTracker(tmp_path, "svc", PREFIX, pages=False)
    for n, start in ((1, T0), (3, T0 + 200), (2, T0 + 100)):
        _files(tmp_path / f"r{n:04d}", "writer-0", 0, 10 * n, n, span=(start, start + 30))
        state = State(f"r{n:04d}", "closed", 10 * n, n, start, start + 30)
        tracker.update(_sample(_writer("writer-0", state)))
    doc = json.loads((tmp_path / "index.json").read_text())
    assert [e["daq_run"] for e in doc["runs"]] == ["r0003", "r0002", "r0001"]
    assert [e["frames"] for e in doc["runs"]] == [30, 20, 10]
    assert [e["hit_rate"] for e in doc["runs"]] == [0.1, 0.1, 0.1]
    assert doc["runs"][0]["start"] == daqruns.iso(T0 + 200)
    assert doc["runs"][0]["end"] == daqruns.iso(T0 + 230)
    assert (doc["daq_runs"], doc["frames"], doc["hits"]) == (3, 60, 6)
    # A new driver of the same service keeps the earlier runs in its index.
    restarted = DaqRunTracker(tmp_path, "svc", PREFIX, pages=False)
    _files(tmp_path / "r0004", "writer-0", 0, events=4, hits=0, span=(T0 + 300, T0 + 300))
    restarted.update(_sample(_writer("writer-0", State("r0004", "closed", 4, 0, T0 + 300))))
    labels = [e["daq_run"] for e in json.loads((tmp_path / "index.json").read_text())["runs"]]
    assert labels == ["r0004", "r0003", "r0002", "r0001"]


def test_files_of_a_writer_that_died_before_closing_the_run_are_counted_from_ledgers(tmp_path):
    folder = tmp_path / "r0006"
    _files(folder, "writer-0", 0, events=5, hits=2)
    _files(folder, "writer-1", 1, events=4, hits=1, part=None)  # died after closing a file
    summary = daqruns.folder_summary(folder, PREFIX)
    assert (summary["events"], summary["hits"], len(summary["files"])) == (9, 3, 2)
    assert summary["complete"] and summary["accounted"] and summary["writer_parts"] == 2


def test_the_end_finalises_a_run_a_dead_writer_left_open(tmp_path):
    """At the end every writer has finished or failed: a run still open in a writer that
    did not fail (it died after its last stats) is finalised as it is, said incomplete."""
    folder = tmp_path / "r0007"
    _files(folder, "writer-0", 0, events=3, hits=0, part=None)  # no part: it died
    (folder / f"{PREFIX}-w01-0000.cxi.part").write_bytes(b"")
    tracker = DaqRunTracker(tmp_path, "svc", PREFIX, pages=False)
    stuck = _writer("writer-0", State("r0007", "open", 3, 0, T0, T0 + 1))
    assert tracker.update(_sample(stuck)) == []
    assert tracker.finish(_sample(stuck)) == ["r0007"]
    report = json.loads((folder / "report.json").read_text())
    assert report["complete"] is False and report["frames"] == 3


def test_the_end_finalises_a_run_open_when_the_service_was_stopped(tmp_path):
    """Stopped mid DAQ run: the writer closes the run as it ends, and its last counts are its
    summary (phase done), which says so (writer/daqrun.py DaqRuns.summary; the writer's side
    is tested in test_writer_daq_runs.py). The run is finalised, complete, with the
    summary's frames, not the last sample's."""
    import dataclasses

    folder = tmp_path / "r0008"
    _files(folder, "writer-0", 0, events=5, hits=1)
    tracker = DaqRunTracker(tmp_path, "svc", PREFIX, pages=False)
    streaming = _writer("writer-0", State("r0008", "open", 4, 1, T0, T0 + 1))
    assert tracker.update(_sample(streaming)) == []
    closed = State("r0008", "closed", 5, 1, T0, T0 + 2, ("peaknet-w00-0000.cxi",))
    done = {**_writer("writer-0", phase="done"), "events": 5}
    done["daq_runs"] = [dataclasses.asdict(closed)]  # a summary is JSON: dicts, not records
    assert tracker.update(_sample(done)) == ["r0008"]  # a sample while the others drain
    assert tracker.finish(_sample(done)) == []
    assert tracker.index["r0008"]["complete"] and tracker.index["r0008"]["frames"] == 5


def test_a_label_that_is_not_a_folder_name_is_refused(tmp_path):
    tracker = DaqRunTracker(tmp_path / "svc", "svc", PREFIX, pages=False)
    assert tracker.update(_sample(_writer("writer-0", State("..", "closed", 1, 0, T0)))) == []
    assert not (tmp_path / "index.json").exists() and not (tmp_path / "svc").exists()


def test_an_atomic_write_leaves_the_old_file_whole_when_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "index.json"
    write_atomic(path, '{"old": true}\n')

    def half_then_fail(self: Path, text: str) -> None:
        with open(self, "w") as fh:
            fh.write(text[:5])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError):
        write_atomic(path, '{"new": true}\n')
    assert path.read_text() == '{"old": true}\n'


def test_a_failed_finalising_is_logged_and_tried_again_at_the_end(tmp_path, monkeypatch):
    tracker = DaqRunTracker(tmp_path, "svc", PREFIX, pages=False)
    _files(tmp_path / "r0008", "writer-0", 0, events=2, hits=1)
    sample = _sample(_writer("writer-0", State("r0008", "closed", 2, 1, T0, T0 + 1)))
    real = daqruns.write_atomic
    monkeypatch.setattr(daqruns, "write_atomic", lambda *a: (_ for _ in ()).throw(OSError("x")))
    assert tracker.update(sample) == [] and tracker.failed == {"r0008"}
    assert tracker.update(sample) == []  # not again at every sample
    monkeypatch.setattr(daqruns, "write_atomic", real)
    assert tracker.finish(sample) == ["r0008"]
    assert json.loads((tmp_path / "index.json").read_text())["runs"][0]["frames"] == 2


def test_the_page_shows_the_run_and_its_span(tmp_path):
    folder = tmp_path / "r0009"
    _files(folder, "writer-0", 0, events=20, hits=5, span=(T0 + 3.5, T0 + 6.5))
    samples = [
        _sample(_writer("writer-0") | {"frames_out": 10 * i, "hits": 2 * i}, t=float(i))
        for i in range(10)
    ]
    series = TimeSeries()
    for s in samples:
        series.add(s)
    tracker = DaqRunTracker(tmp_path, "svc", PREFIX, streaming_since=T0)
    state = State("r0009", "closed", 20, 5, T0 + 3.5, T0 + 6.5)
    assert tracker.update(_sample(_writer("writer-0", state), t=9.0), series) == ["r0009"]
    assert [s.t for s in span_samples(samples, T0, T0 + 3.5, T0 + 6.5)] == [3, 4, 5, 6, 7]
    html = (folder / "report.html").read_text()
    assert "DAQ run r0009" in html and "Rates over its span" in html and "25.0%" in html
    assert 'href="../index.html"' in html
