"""The GPU check's CPU form (bench/gpu_check.py --cpu-smoke) runs in `make test`, so the script
meant for the first GPU machine cannot rot: it runs in a subprocess where Ray and the other
packages that machine lacks cannot be imported, and its last line is the JSON the GPU run
will print."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Not on the bare GPU machine (see /work/.library/device/KINDS.md's package list); the config
# packages (pydantic, yaml-driven config) stand behind Ray in the pipeline's imports.
ABSENT_THERE = ("ray", "pydantic", "zmq", "pynng", "hdf5plugin", "kopf", "kubernetes")
RUN_WITHOUT = f"""
import runpy, sys
for name in {ABSENT_THERE!r}:
    sys.modules[name] = None  # import raises ImportError, as on a machine without it
sys.argv = ["gpu_check.py", "--cpu-smoke", "--budget-s", "120"]
try:
    runpy.run_path({str(ROOT / "bench" / "gpu_check.py")!r}, run_name="__main__")
finally:
    loaded = sorted(n for n in sys.modules if n.split(".")[0] in {ABSENT_THERE!r}
                    and sys.modules[n] is not None)
    print("LOADED", loaded, file=sys.stderr)
"""


def test_cpu_smoke_runs_without_ray_and_prints_the_json_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "LOADED []" in done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bench"] == "gpu_check" and result["mode"] == "cpu-smoke"
    assert result["correct"] is True
    (check,) = result["correctness"]
    assert check["mask_diff_clear"] == 0 and check["peaks_equal"] and check["peaks_ref"] > 0
    assert {r["depth"] for r in result["runner"]} == {1, 2, 3}
    assert all(r["fps"] > 0 for r in result["bare"] + result["runner"])
    assert result["copies"][0]["bytes_back_mask"] == 61 * 61
    assert (tmp_path / "out" / "gpu_check_trace.json.gz").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == result


def test_carried_wheels_are_unpacked_onto_the_path(tmp_path):
    """`make gpu-wheels` output travels as wheels; the script needs no pip step to use them."""
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "bench" / "gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    add_wheels = module.add_wheels
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "carried_demo-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("carried_demo/__init__.py", "VALUE = 42\n")
    site = tmp_path / "site"
    try:
        assert add_wheels(wheels, site) == ["carried_demo-1.0-py3-none-any.whl"]
        import carried_demo

        assert carried_demo.VALUE == 42
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("carried_demo", None)
    assert add_wheels(tmp_path / "absent", site) == []
