"""Upstream lesson 1: the package did not install (flat layout, undeclared dependencies)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"peaknet_pipeline", "peaknet_operator"}


def _source_packages() -> set[str]:
    return {
        ".".join(init.parent.relative_to(REPO / top).parts)
        for top in ("pipeline", "operator")
        for init in (REPO / top).rglob("__init__.py")
    }


def _third_party_imports(root: Path) -> set[str]:
    modules = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in FIRST_PARTY}


@pytest.mark.slow
def test_wheel_contains_every_package_and_declares_every_import(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("peaknet_pipeline-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packaged = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("__init__.py")}
    assert _source_packages() <= packaged, _source_packages() - packaged

    declared = {
        re.split(r"[\s<>=!~\[;]", line.split(":", 1)[1].strip())[0].lower().replace("_", "-")
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    }
    dists = packages_distributions()
    for module in _third_party_imports(REPO / "pipeline") | _third_party_imports(REPO / "operator"):
        providers = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        assert providers & declared, f"{module} is imported but no dependency provides it"


def test_the_cli_parser_is_built_without_importing_ray():
    """The CLI configures Ray's log forwarding from the parsed config before Ray is imported
    (RAY_DISABLE_WORKER_LOG_PREFIX is read at import); a parser that imports Ray through the
    `push` options makes that setting silently ineffective."""
    code = (
        "import sys\n"
        "from peaknet_pipeline import cli\n"
        "cli.build_parser()\n"
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "print(loaded[:3])\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"building the parser imported {done.stdout.strip()}"


def test_test_files_have_unique_names():
    """pytest imports test modules by their file name (rootdir-relative `prepend` mode, no
    __init__.py): two test files of one name in different folders make the second fail to
    collect, in CI only when both are collected."""
    tests = Path(__file__).resolve().parents[1]
    names = [p.name for p in tests.rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
