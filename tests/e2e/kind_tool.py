"""Helpers of tests/e2e/kind.sh, runnable on their own (and tested here on a local run):

    python tests/e2e/kind_tool.py long-run > long.yaml     # the manifest of the scaling run
    python tests/e2e/kind_tool.py check DIR --frames 512   # a run's files copied out of the volume
    python tests/e2e/kind_tool.py check DIR --frames 1536 --min-recovery 0.95

`check` reads the run's report.json and CXI files: a clean exit, every ingested frame handled
by the writers, the files' events equal to what the writers wrote, no partial files and, for
the threshold model, the injected peaks of the random source found again within 1.5 px.

    python tests/e2e/kind_tool.py sizing examples/run.yaml long.yaml   # fits one kind node?
    python tests/e2e/kind_tool.py budget                   # kind.sh's waits vs the workflow
    python tests/e2e/kind_tool.py disk --need-images 2 --image-bytes N --free-bytes F

`sizing` places every pod of each resource (at its replicas and with the inference group at
maxReplicas) on the one node kind makes of a GitHub runner, next to what already runs there
(peaknet_operator.scheduling), and prints the scheduler's message for each pod that would stay
Pending. `budget` and `disk` are the suite's time and disk sums, enforced by kind.sh.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from peaknet_operator.checks import parse_spec
from peaknet_operator.scheduling import Node, PodRequest, fits, node, pipeline_pods, pod_request

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "run.yaml"
LONG_RUN = "demo-long"
MAX_SPURIOUS = 0.02
CHART_VALUES = REPO / "charts" / "peaknet-operator" / "values.yaml"

# The node kind makes of a GitHub-hosted ubuntu-24.04 runner (public repositories: 4 CPUs,
# 16 GB; docs.github.com/en/actions/reference/runners/github-hosted-runners). kind's kubelet
# reserves nothing, so allocatable is the machine; one node, its control-plane taint removed.
RUNNER_CPU, RUNNER_MEMORY = "4", "16Gi"


def _pod(name: str, requests: dict[str, str], limits_only: bool = False) -> PodRequest:
    resources = {"limits" if limits_only else "requests": requests}
    return pod_request(name, {"containers": [{"resources": resources}]})


# What runs on kind's node before the suite adds anything: 950m CPU, 290Mi of requests.
CONTROL_PLANE: tuple[PodRequest, ...] = (
    # kubernetes cmd/kubeadm/app/phases/controlplane/manifests.go: GetStaticPodSpecs
    # (staticpodutil.ComponentResources: CPU requests only).
    _pod("kube-apiserver", {"cpu": "250m"}),
    _pod("kube-controller-manager", {"cpu": "200m"}),
    _pod("kube-scheduler", {"cpu": "100m"}),
    # cmd/kubeadm/app/phases/etcd/local.go: GetEtcdPodSpec.
    _pod("etcd", {"cpu": "100m", "memory": "100Mi"}),
    # cmd/kubeadm/app/phases/addons/dns/manifests.go: CoreDNSDeployment, two replicas.
    _pod("coredns-1", {"cpu": "100m", "memory": "70Mi"}),
    _pod("coredns-2", {"cpu": "100m", "memory": "70Mi"}),
    # kind pkg/build/nodeimage/const_cni.go: the kindnet DaemonSet.
    _pod("kindnet", {"cpu": "100m", "memory": "50Mi"}),
    # kube-proxy (kubeadm's DaemonSet) and kind's local-path-provisioner
    # (pkg/build/nodeimage/const_storage.go) request nothing.
)
# KubeRay v1.7.0 helm-chart/kuberay-operator/values.yaml: limits 100m CPU, 512Mi, no requests,
# so the API server makes the requests equal to the limits.
KUBERAY_OPERATOR = _pod("kuberay-operator", {"cpu": "100m", "memory": "512Mi"}, limits_only=True)


def peaknet_operator_pod(values: Path = CHART_VALUES) -> PodRequest:
    """Our operator's pod as the chart's default values ask for it."""
    resources = yaml.safe_load(values.read_text())["resources"]
    return pod_request("peaknet-operator", {"containers": [{"resources": resources}]})


def kind_node() -> Node:
    """The suite's one kind node with the control plane and both operators on it."""
    running = (*CONTROL_PLANE, KUBERAY_OPERATOR, peaknet_operator_pod())
    return node("peaknet-e2e-control-plane", RUNNER_CPU, RUNNER_MEMORY, running=running)


def kind_sizing(manifest: dict[str, Any], namespace: str = "default") -> list[str]:
    """What of a resource would stay Pending on the kind node: its pods as rendered (the
    submitter included), and again with the inference group at maxReplicas (after `kubectl
    scale`). Empty: everything fits."""
    name = manifest["metadata"]["name"]
    spec, problems = parse_spec(manifest["spec"])
    if spec is None or problems:
        return [f"{name}: spec not accepted: {p}" for p in problems]
    found = []
    for at_max, when in ((False, "as applied"), (True, "at maxReplicas")):
        pods = pipeline_pods(name, namespace, spec, at_max=at_max)
        found += [f"{name} {when}: {line}" for line in fits(pods, [kind_node()])]
    return found


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


# The suite's time budget. Every wait in kind.sh is a WAIT_<NAME>=<seconds> line at its top
# (wait_for, helm's and kubectl's --timeout, and `timeout` around the image builds and loads),
# and the workflow gives each step a timeout-minutes. budget_problems adds them up; kind.sh
# refuses to start when they do not fit, and a test checks the same sums.
KIND_SH = REPO / "tests" / "e2e" / "kind.sh"
WORKFLOW = REPO / ".github" / "workflows" / "e2e.yaml"
E2E_STEP = "kind e2e"
DIAGNOSE_S = 300  # diagnose() on failure: describe, logs, `kind export logs`
_WAIT = re.compile(r"^(WAIT_[A-Z0-9_]+)=([0-9]+)\b", re.M)
_LITERAL_WAIT = re.compile(r"(wait_for|--timeout[ =]|--wait |timeout )\s*[0-9]")


def script_waits(script: str) -> dict[str, int]:
    """kind.sh's worst-case waits, seconds, by name."""
    return {m[1]: int(m[2]) for m in _WAIT.finditer(script)}


def budget_problems(script: str, workflow: str) -> list[str]:
    """Why kind.sh's worst case does not fit the workflow's limits (empty: it fits)."""
    problems = []
    literal = [m.group(0) for m in _LITERAL_WAIT.finditer(script)]
    if literal:
        problems.append(f"kind.sh waits outside a WAIT_ variable: {literal}")
    waits = script_waits(script)
    worst = sum(waits.values()) + DIAGNOSE_S
    job = yaml.safe_load(workflow)["jobs"]["kind"]
    steps = {step.get("name", step.get("uses")): step for step in job["steps"]}
    untimed = [name for name, step in steps.items() if "timeout-minutes" not in step]
    if untimed:
        problems.append(f"workflow steps without timeout-minutes: {untimed}")
    e2e_s = 60 * steps.get(E2E_STEP, {}).get("timeout-minutes", 0)
    if worst > e2e_s:
        problems.append(
            f"kind.sh's waits add up to {worst} s ({worst / 60:.0f} min, with {DIAGNOSE_S} s "
            f"for diagnose) > the '{E2E_STEP}' step's timeout-minutes ({e2e_s // 60})"
        )
    step_s = 60 * sum(step.get("timeout-minutes", 0) for step in steps.values())
    if step_s > 60 * job["timeout-minutes"]:
        problems.append(
            f"the steps' timeout-minutes add up to {step_s // 60} > the job's "
            f"timeout-minutes ({job['timeout-minutes']})"
        )
    return problems


# The suite's disk budget. GitHub's ubuntu-24.04 runner has about 14 GB free on / (docs:
# "Storage (SSD) 14 GB"; the workflow's "Free disk" step removes preinstalled SDKs first).
# The CPU pipeline image is stored in Docker (built) and again in the kind node's containerd;
# `kind load docker-image` first writes it to a tar (`docker save`, kind
# pkg/cmd/kind/load/docker-image/docker-image.go) and containerd keeps the imported layers and
# their unpacked snapshot: 3 more copies at the peak, 2 after. kind.sh removes Docker's copy and
# the build cache once the images are loaded.
GIB = 1 << 30
RUNNER_FREE_DISK = 14 * 10**9
IMAGE_BUDGET = 5 * GIB  # both images, CPU torch (kind.sh refuses a larger build)
DISK_MARGIN = 3 * GIB  # the run volumes (1Gi each), logs, the KubeRay image pulled by kind


def disk_problems(free_bytes: int, image_bytes: int, built: bool) -> list[str]:
    """Whether the disk holds the images' copies (empty: it does). `built`: the images are in
    Docker already (before `kind load`); else before the builds, with the budget's size."""
    copies = 3 if built else 4
    need = copies * image_bytes + DISK_MARGIN
    if image_bytes > IMAGE_BUDGET:
        size, budget = image_bytes / GIB, IMAGE_BUDGET / GIB
        return [f"the images take {size:.1f} GiB > their budget, {budget:.0f} GiB"]
    if free_bytes < need:
        return [
            f"{free_bytes / GIB:.1f} GiB free, {need / GIB:.1f} GiB needed: {copies} x "
            f"{image_bytes / GIB:.1f} GiB of images (Docker, the `kind load` tar, containerd's "
            f"layers and snapshot) + {DISK_MARGIN / GIB:.0f} GiB"
        ]
    return []


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
    sizing = commands.add_parser("sizing", help="do these resources fit the kind node?")
    sizing.add_argument("manifests", type=Path, nargs="+")
    commands.add_parser("budget", help="kind.sh's waits against the workflow's limits")
    disk = commands.add_parser("disk", help="does the disk hold the images' copies?")
    disk.add_argument("--free-bytes", type=int, required=True)
    disk.add_argument("--image-bytes", type=int, default=IMAGE_BUDGET)
    disk.add_argument("--built", action="store_true")
    check = commands.add_parser("check", help="check a run's files")
    check.add_argument("directory", type=Path)
    check.add_argument("--frames", type=int, required=True)
    check.add_argument("--min-recovery", type=float, default=None)
    args = parser.parse_args(argv)
    if args.command == "long-run":
        yaml.safe_dump(long_run_manifest(), sys.stdout, sort_keys=False)
        return 0
    if args.command in ("sizing", "budget", "disk"):
        if args.command == "sizing":
            manifests = [yaml.safe_load(path.read_text()) for path in args.manifests]
            problems = [line for m in manifests for line in kind_sizing(m)]
        elif args.command == "budget":
            problems = budget_problems(KIND_SH.read_text(), WORKFLOW.read_text())
        else:
            problems = disk_problems(args.free_bytes, args.image_bytes, args.built)
        for problem in problems:
            print(f"FAIL {args.command}: {problem}", file=sys.stderr)
        return 1 if problems else 0
    run_dir = run_directory(args.directory)
    problems = check_run(run_dir, args.frames, args.min_recovery)
    for problem in problems:
        print(f"FAIL {run_dir}: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok {run_dir}: {args.frames} frames")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
