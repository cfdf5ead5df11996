"""checkov (offline, --skip-download) over the rendered chart (defaults and every option), the
operator's rendered children of both examples, and both Dockerfiles: no finding beyond those
listed, with their reasons, in tests/deploy/checkov/suppressions.yaml. checkov runs once for
all of them. It knows Kubernetes' built-in kinds: the RayCluster's pod templates (a KubeRay
kind) are outside its checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart_render import REPO, all_values, render
from peaknet_operator.checks import parse_spec
from peaknet_operator.render import render_all

SUPPRESSIONS = REPO / "tests" / "deploy" / "checkov" / "suppressions.yaml"
EXAMPLES = ("run.yaml", "run-gpu.yaml")

pytestmark = pytest.mark.slow  # one checkov run: about 10 s here


def checkov_binary() -> str | None:
    """$CHECKOV (make test sets it), else the Makefile's venv, else one on PATH."""
    for candidate in (os.environ.get("CHECKOV"), str(REPO / ".venv-checkov" / "bin" / "checkov")):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("checkov")


def write_targets(root: Path) -> None:
    (root / "chart-defaults.yaml").write_text(yaml.safe_dump_all(render()))
    (root / "chart-every-option.yaml").write_text(yaml.safe_dump_all(render(all_values())))
    for name in EXAMPLES:
        manifest = yaml.safe_load((REPO / "examples" / name).read_text())
        spec, problems = parse_spec(manifest["spec"])
        assert not problems, problems
        children = render_all(manifest["metadata"]["name"], "beamtime", spec)
        (root / f"operator-{name}").write_text(yaml.safe_dump_all(children))
    for image in ("pipeline", "operator"):
        (root / "images" / image).mkdir(parents=True)
        shutil.copy(REPO / "images" / image / "Dockerfile", root / "images" / image)


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> dict[str, Any]:
    binary = checkov_binary()
    if binary is None:
        pytest.skip("checkov is not installed: `make checkov-env` (make test does it)")
    root = tmp_path_factory.mktemp("checkov")
    write_targets(root)
    started = time.monotonic()
    result = subprocess.run(
        [binary, "-d", str(root), "--framework", "kubernetes", "dockerfile", "--skip-download"]
        + ["--quiet", "--compact", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return {
        "reports": {r["check_type"]: r for r in reports},
        "seconds": time.monotonic() - started,
        "stderr": result.stderr,
    }


def suppressions() -> list[dict[str, str]]:
    return yaml.safe_load(SUPPRESSIONS.read_text())


def test_every_target_was_scanned(scan):
    reports = scan["reports"]
    assert set(reports) == {"kubernetes", "dockerfile"}, scan["stderr"][-2000:]
    for report in reports.values():
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] > 0
    assert reports["dockerfile"]["summary"]["resource_count"] == 2


def test_no_finding_beyond_the_justified_suppressions(scan):
    accepted = {(s["check"], s["resource"]) for s in suppressions()}
    failed = [
        (c["check_id"], c["resource"], c["file_path"], c["check_name"])
        for report in scan["reports"].values()
        for c in report["results"]["failed_checks"]
    ]
    assert [f for f in failed if (f[0], f[1]) not in accepted] == []
    stale = accepted - {(f[0], f[1]) for f in failed}
    assert stale == set(), "suppressions that match nothing: remove them"


def test_each_suppression_says_why_in_one_line():
    entries = suppressions()
    assert entries
    for entry in entries:
        assert set(entry) == {"check", "resource", "why"}
        assert entry["why"].strip() and "\n" not in entry["why"].strip()
