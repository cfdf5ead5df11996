"""Helpers of tests/e2e/kind.sh, runnable on their own (and tested here on a local run):

    python tests/e2e/kind_tool.py long-run > long.yaml     # the manifest of the scaling run
    python tests/e2e/kind_tool.py check DIR --frames 512   # a run's files copied out of the volume
    python tests/e2e/kind_tool.py check DIR --frames 1536 --min-recovery 0.95

`check` reads the run's report.json and CXI files: a clean exit, every ingested frame handled
by the writers, the files' events equal to what the writers wrote, no partial files and, for
the threshold model, the injected peaks of the random source found again within 1.5 px.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "run.yaml"
LONG_RUN = "demo-long"
MAX_SPURIOUS = 0.02


def long_run_manifest(base: dict[str, Any] | None = None) -> dict[str, Any]:
    """examples/run.yaml as a run that streams for about three minutes (time to scale the
    inference group 1 -> 2 while it runs) through the threshold model, whose peaks can be
    checked against the random source's ground truth. Small pods: two inference pods and the
    rest fit next to KubeRay on one 4-CPU kind node."""
    manifest = copy.deepcopy(base or yaml.safe_load(EXAMPLE.read_text()))
    manifest["metadata"]["name"] = LONG_RUN
    pipeline = manifest["spec"]["pipeline"]
    pipeline["source"]["random"].update(num_frames=1536, rate_hz=8.0)
    pipeline["model"] = {"kind": "threshold", "threshold": 60.0}
    pipeline["inference"].update(normalize=False, num_cpus_per_actor=0.5)
    pipeline["writer"].update(min_peaks=0)
    inference = manifest["spec"]["cluster"]["inference"]
    inference.update(replicas=1, maxReplicas=2, cpu="500m")
    return manifest


def run_directory(root: Path) -> Path:
    """The one run directory (holding report.json) at or below `root`."""
    found = sorted(p.parent for p in root.rglob("report.json"))
    if len(found) != 1:
        raise SystemExit(f"expected one run (report.json) under {root}, found {len(found)}")
    return found[0]


def check_run(run_dir: Path, frames: int, min_recovery: float | None) -> list[str]:
    """What is wrong with a finished run's output (empty: nothing)."""
    import hdf5plugin  # noqa: F401 - the writers' bitshuffle/LZ4 filter

    from peaknet_pipeline.config import RandomSourceConfig
    from peaknet_pipeline.evaluate import random_run_recovery, read_peak_lists

    report = json.loads((run_dir / "report.json").read_text())
    acc = report["accounting"]
    problems = []
    if report["exit_code"] != 0:
        problems.append(f"exit code {report['exit_code']} ({report['ended_by']})")
    if acc["frames_ingested"] != frames or acc["events_handled_by_writers"] != frames:
        problems.append(
            f"{frames} frames expected: {acc['frames_ingested']} ingested, "
            f"{acc['events_handled_by_writers']} handled by the writers"
        )
    files = sorted(run_dir.glob("*.cxi"))
    partial = sorted(p.name for p in run_dir.iterdir() if p.suffix == ".part")
    if not files or partial:
        problems.append(f"{len(files)} CXI files, partial files: {partial}")
    in_files = len(read_peak_lists(files))
    if in_files != acc["events_written"]:
        problems.append(f"{in_files} events in the files, writers wrote {acc['events_written']}")
    if min_recovery is not None:
        cfg = RandomSourceConfig.model_validate(report["config"]["source"]["random"])
        stats = random_run_recovery(cfg, files, report["ingest"])
        if stats["recovered_frac"] < min_recovery or stats["spurious_frac"] > MAX_SPURIOUS:
            problems.append(f"peak recovery below {min_recovery}: {stats}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("long-run", help="print the scaling run's manifest")
    check = commands.add_parser("check", help="check a run's files")
    check.add_argument("directory", type=Path)
    check.add_argument("--frames", type=int, required=True)
    check.add_argument("--min-recovery", type=float, default=None)
    args = parser.parse_args(argv)
    if args.command == "long-run":
        yaml.safe_dump(long_run_manifest(), sys.stdout, sort_keys=False)
        return 0
    run_dir = run_directory(args.directory)
    problems = check_run(run_dir, args.frames, args.min_recovery)
    for problem in problems:
        print(f"FAIL {run_dir}: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok {run_dir}: {args.frames} frames")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
