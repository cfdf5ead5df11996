"""Running a whole pipeline inside a test and watching it from outside, as a user or the
operator would: the driver in a thread of the test process (on the session's Ray), its
control actor, its actors' processes and its output files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import h5py

from peaknet_pipeline.config import PipelineConfig, apply_overrides
from peaknet_pipeline.control import control_name


def random_run(
    tmp_path: Path, run_id: str, frames: int, rate_hz: float, overrides: tuple[str, ...] = ()
) -> PipelineConfig:
    """A small run: random 64 x 64 frames in batches of 4 (`frames` = 0: endless) through the
    threshold oracle and one writer that keeps every event, in tmp_path/<run id>, without
    report.html (its plots cost the driver about 1.5 s of CPU a run: a test that reads the page
    turns it on); `overrides` as `--set` takes them."""
    base = {
        "source": {
            "random": {
                "frame_shape": [1, 64, 64],
                "batch_size": 4,
                "num_frames": frames,
                "rate_hz": rate_hz,
                "peaks_per_frame": 3,
            }
        },
        "model": {"kind": "threshold", "threshold": 60.0},
        "inference": {"num_actors": 1, "num_cpus_per_actor": 0.5},
        "writer": {"output_dir": str(tmp_path / "{run_id}"), "min_peaks": 0},
        "monitor": {"console": False, "report_html": False},
        "runtime": {"run_id": run_id, "drain_timeout_s": 60},
    }
    return PipelineConfig.model_validate(apply_overrides(base, overrides))


class DriverThread(threading.Thread):
    """`driver.run` in the background; `report` once it returns. `pipeline` is the run's
    Pipeline once it exists (the driver's own view of its actors: the test kills them)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        super().__init__(daemon=True)
        self.cfg, self.report, self.error = cfg, None, None
        self.pipeline: Any = None

    def run(self) -> None:
        from peaknet_pipeline import driver

        thread = self

        original = driver.Pipeline

        class Watched(original):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                thread.pipeline = self

        driver.Pipeline = Watched
        try:
            self.report = driver.run(self.cfg)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc
        finally:
            driver.Pipeline = original

    def finish(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """The report, once the run has ended (fails the test if it does not)."""
        self.join(timeout=timeout_s)
        assert not self.is_alive(), "the run did not end"
        assert self.error is None, self.error
        return self.report

    def running(self, role: str) -> list[Any]:
        """The run's actors of `role` that are running (ready, with a pid), oldest first."""
        pipeline = wait_for("the pipeline", lambda: self.pipeline)
        return [
            a
            for a in list(pipeline.actors)
            if a.role == role and a.running and a.run_ref is not None and a.pid is not None
            and not getattr(a, "retiring", False)
        ]  # fmt: skip


def wait_control(run_id: str, timeout_s: float = 60.0) -> Any:
    """The run's control actor, once the driver has started it."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get_actor(control_name(run_id))
        except ValueError:
            assert time.monotonic() < deadline, "the run's control actor never appeared"
            time.sleep(0.2)


def wait_pool(control: Any, timeout_s: float = 90.0, poll_s: float = 0.1, **expected: Any) -> dict:
    """The pool state once it shows `expected` (polled: this is the test watching)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        state = ray.get(control.pool_state.remote())
        if all(state.get(k) == v for k, v in expected.items()):
            return state
        assert time.monotonic() < deadline, f"pool never reached {expected}: {state}"
        time.sleep(poll_s)


def wait_for(what: str, check, timeout_s: float = 60.0, poll_s: float = 0.05) -> Any:
    """check()'s first truthy answer (polled: this is the test watching from outside)."""
    deadline = time.monotonic() + timeout_s
    while not (answer := check()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(poll_s)
    return answer


def _raylet_pid() -> int:
    """The pid of this test session's raylet: the parent of every worker it started."""
    from ray._private import ray_constants, worker

    return worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def pids_running(actor_class: str) -> list[int]:
    """Worker processes of this session's Ray that hold an actor of `actor_class` (Ray titles
    them `ray::<Class>`). Other Ray sessions on the machine are left alone."""
    raylet, pids = _raylet_pid(), []
    title = f"ray::{actor_class}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                parent = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == raylet and cmdline.split(b"\0")[0].rstrip(b".()") in (title,):
            pids.append(int(entry.name))
    return pids


def event_ids(out: Path) -> list[int]:
    """Every event id in the complete CXI files under `out`, sorted (duplicates kept)."""
    ids: list[int] = []
    for path in sorted(out.glob("*.cxi")):
        with h5py.File(path, "r") as f:
            ids += f["/LCLS/event_id"][:].tolist()
    return sorted(ids)


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`peaknet-pipeline ARGS` run in `cwd` as a user types it; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "peaknet_pipeline.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )
