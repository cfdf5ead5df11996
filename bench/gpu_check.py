#!/usr/bin/env python3
"""The GPU check: the CUDA runner proved against the CPU reference, then measured, in one
command on a bare GPU machine (no Ray, no network) within a time budget.

    PYTHONPATH=pipeline python3 bench/gpu_check.py            # on the GPU machine (bench/README.md)
    .venv/bin/python bench/gpu_check.py --cpu-smoke           # seconds, here (tests run it)

Steps, in priority order; each is skipped, and said so, when the budget (--budget-s, default
420 s) could not hold it: the bf16 matrix-product ceiling; correctness (fp32 with TF32 off,
tf32, bf16, fp16 against the CPU fp32 engine); channels-last and cudnn.benchmark probes;
frames/s of the bare model and of the project's runner (`pump` + `CudaRunner`, N staged pinned
slots) for the default and 673M presets at 1691 and 1920, with the runner's own timeline (the
device's idle gaps between batches, from its CUDA events, as report.json's `gpu` shows them);
copy overlap, bytes back per frame;
a torch.profiler trace; torch.compile in a child process with a time cap. Prints a table; the
last line is one JSON object. Files go to $OUT (else ./gpu-check-out).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "build" / "gpu-wheels"
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "pipeline")]

from gpu_wheels import add_wheels  # noqa: E402 - standard library only

CARRIED = add_wheels(WHEELS, Path(os.environ.get("TMPDIR", "/tmp")) / "gpu-check-site")

import torch  # noqa: E402 - after the carried wheels are on the path

import gpu_check_lib as lib  # noqa: E402

GPU_PLAN = {  # preset -> sides, precisions -> batches, runner batches
    "default": ([1691, 1920], {"bf16": [1, 2, 4, 8, 16], "fp16": [1, 2, 4, 8, 16],
                               "fp32": [1, 2, 4, 8, 16]}, [1, 4, 16]),
    "673m": ([1691, 1920], {"bf16": [1, 2, 4, 8, 16], "fp16": [1, 4, 16], "fp32": [1, 4]}, [4]),
}  # fmt: skip
SMOKE_PLAN = {"demo": ([61], {"fp32": [1, 2]}, [2])}
DEPTHS = (1, 2, 3)


class Budget:
    """Wall-clock budget: a step runs only if its estimate fits in what is left."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0 = seconds, time.perf_counter()

    def used(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.used()

    def fits(self, estimate_s: float) -> bool:
        return self.left() > estimate_s


class Report:
    """Rows printed as they come (the table) and collected for the JSON line."""

    def __init__(self, mode: str) -> None:
        self.data: dict[str, Any] = {"bench": "gpu_check", "mode": mode, "skipped": []}
        self.lock = threading.Lock()

    def add(self, section: str, row: dict[str, Any]) -> None:
        with self.lock:
            self.data.setdefault(section, []).append(row)
        cells = "  ".join(f"{k}={_fmt(v)}" for k, v in row.items())
        print(f"{section:<12} {cells}", flush=True)

    def skip(self, what: str, why: str) -> None:
        self.add("skipped", {"what": what, "why": why})

    def json_line(self) -> str:
        with self.lock:
            return json.dumps(self.data, default=str)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def measure_bare(rep, budget, name, model, side, precision, batches, cl, device, flops, ceiling):
    """Bare-model frames/s over a batch series; stops the series at an OOM or the budget."""
    per_frame = None
    for batch in batches:
        estimate = 4 * (per_frame or 0.05) * batch + 2
        if not budget.fits(estimate + RESERVE_S):
            rep.skip(f"bare {name} {side} {precision} b{batch}", "time budget")
            continue
        try:
            s = lib.time_call(lib.bare_forward(lib.engine(model, device, precision,
                              channels_last=cl), batch, side), device, TARGET_S)  # fmt: skip
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            rep.skip(f"bare {name} {side} {precision} b{batch}+", "out of GPU memory")
            return
        per_frame = s / batch
        fps = batch / s
        mfu = flops * fps / (ceiling * 1e12) if ceiling else None
        rep.add("bare", {"model": name, "side": side, "precision": precision, "batch": batch,
                         "channels_last": cl, "fps": fps, "mfu": mfu})  # fmt: skip


def measure_runner(rep, budget, name, model, side, precision, batch, cl, device, bare_fps):
    """The project's runner fed from pinned staged slots, depth 1..3, with its efficiency."""
    images = lib.frames(batch, side, seed=1)
    for depth in DEPTHS:
        if not budget.fits(4 * batch / (bare_fps or 20) + 3 + RESERVE_S):
            rep.skip(f"runner {name} {side} {precision} b{batch} d{depth}", "time budget")
            continue
        runner = lib.make_runner(lib.engine(model, device, precision, channels_last=cl))
        slots = lib.staged_slots(runner, images, depth)
        lib.drive(runner, slots, 2)  # warm-up: allocations, pinned output buffers
        n = max(4, int(TARGET_S * (bare_fps or 20) / batch))
        wall, outs = lib.drive(runner, slots, n)
        fps = n * batch / wall
        rep.add("runner", {"model": name, "side": side, "precision": precision, "batch": batch,
                           "depth": depth, "fps": fps, "efficiency": fps / bare_fps
                           if bare_fps else None, "mask_bytes_per_frame": outs[0].nbytes // batch,
                           "timeline": runner.timeline.as_dict()})  # fmt: skip


def measure_copies(rep, name, model, side, precision, batch, cl, device, runner_fps):
    """How much of the copy time the runner hides: the serial sum of copy-in, compute and
    copy-out (each alone, CUDA events) against the runner's time per batch."""
    eng = lib.engine(model, device, precision, channels_last=cl)
    images = lib.frames(batch, side, seed=2)
    t, mask, device_images = lib.copy_times(eng, images)
    per_batch = batch / runner_fps
    copies = t["h2d_s"] + t["d2h_s"]
    hidden = (t["h2d_s"] + t["compute_s"] + t["d2h_s"] - per_batch) / copies if copies else None
    dev_peaks = lib.device_peak_bytes(mask, device_images)
    rep.add("copies", {"model": name, "side": side, "precision": precision, "batch": batch,
                       **t, "runner_batch_s": per_batch,
                       "copy_hidden": None if hidden is None else min(max(hidden, 0.0), 1.0),
                       "gpu_busy": t["compute_s"] / per_batch,
                       "bytes_back_mask": side * side,
                       "bytes_back_device_peaks": dev_peaks})  # fmt: skip


def write_trace(rep, model, side, device, out: Path) -> None:
    """A torch.profiler chrome trace of a few runner batches (depth 2, bf16 on the GPU)."""
    from torch.profiler import ProfilerActivity, profile

    precision = "bf16" if device.startswith("cuda") else "fp32"
    runner = lib.make_runner(lib.engine(model, device, precision))
    slots = lib.staged_slots(runner, lib.frames(2, side), 2)
    lib.drive(runner, slots, 2)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        lib.drive(runner, slots, 4)
    plain, path = out / "gpu_check_trace.json", out / "gpu_check_trace.json.gz"
    prof.export_chrome_trace(str(plain))  # then one gzip pass: torch's own .gz writes per line
    path.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=5))
    plain.unlink()
    rep.data["trace"] = str(path)
    print(f"trace        {path} ({path.stat().st_size} bytes)", flush=True)


def compile_probe(rep, budget, name, side, precision, batch, cap_s) -> None:
    """torch.compile in a child process with its own session, killed at `cap_s`: a compile that
    hangs or outlasts the cap costs no more than the cap, and eager is the fallback."""
    cap = min(cap_s, budget.left() - RESERVE_S)
    if cap < 60:
        rep.skip(f"compile {name}", f"time budget ({budget.left():.0f} s left)")
        return
    cmd = [sys.executable, __file__, "--compile-probe", name, str(side), precision, str(batch)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = child.communicate(timeout=cap)
        row = json.loads(out.strip().splitlines()[-1]) if child.returncode == 0 else None
        rep.add("compile", row or {"model": name, "status": f"failed (exit {child.returncode})",
                                   "fallback": "eager"})  # fmt: skip
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        rep.add("compile", {"model": name, "status": f"timeout after {cap:.0f} s",
                            "fallback": "eager"})  # fmt: skip


def run_compile_child(name: str, side: int, precision: str, batch: int) -> None:
    """The child of `compile_probe`: compile, warm up, time; one JSON line."""
    model = lib.build(name, "cuda")
    t0 = time.perf_counter()
    eng = lib.Engine(model, "cuda", precision, compile=True)
    fn = lib.bare_forward(eng, batch, side)
    fn()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    s = lib.time_call(fn, "cuda", TARGET_S)
    print(json.dumps({"model": name, "side": side, "precision": precision, "batch": batch,
                      "status": "ok", "compile_s": compile_s, "fps": batch / s}))  # fmt: skip


def main() -> int:
    global TARGET_S, RESERVE_S
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny CPU form (automatic w/o CUDA)")
    p.add_argument(
        "--budget-s", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 420))
    )
    p.add_argument("--compile-cap-s", type=float, default=150.0)
    p.add_argument("--compile-probe", nargs=4, metavar=("MODEL", "SIDE", "PRECISION", "BATCH"))
    args = p.parse_args()
    if args.compile_probe:
        name, side, precision, batch = args.compile_probe
        run_compile_child(name, int(side), precision, int(batch))
        return 0
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else "cuda"
    if smoke:
        torch.set_num_threads(1)  # seconds on a loaded shared CPU: no OpenMP barriers to wait on
    TARGET_S, RESERVE_S = (0.05, 0.0) if smoke else (0.6, 25.0)
    out = Path(os.environ.get("OUT") or os.environ.get("GPU_CHECK_OUT") or "gpu-check-out")
    out.mkdir(parents=True, exist_ok=True)
    rep = Report("cpu-smoke" if smoke else "cuda")
    budget = Budget(args.budget_s)
    watchdog = threading.Timer(args.budget_s + 40, _abort, (rep, out))
    watchdog.daemon = True
    watchdog.start()
    rep.data.update(_environment(device), carried_wheels=CARRIED, budget_s=args.budget_s)
    print(
        f"gpu_check    {rep.data['device_name']}  torch {torch.__version__}  "
        f"budget {args.budget_s:.0f} s  carried wheels: {CARRIED or 'none'}",
        flush=True,
    )
    ceiling = lib.matmul_ceiling(device, 512 if smoke else 8192)
    rep.add("ceiling", {"bf16_matmul_tflops": ceiling})

    find_peaks = lib.writer_find_peaks()
    checks = [("demo", 61, 2)] if smoke else [("demo", 1691, 2), ("default", 1691, 1)]
    precisions = ["fp32"] if smoke else ["fp32", "tf32", "bf16", "fp16"]
    for name, side, n in checks:
        if budget.fits(40 + RESERVE_S):
            for row in lib.correctness(name, side, n, device, precisions, find_peaks):
                rep.add("correctness", row)
        else:
            rep.skip(f"correctness {name}", "time budget")
    if find_peaks is None:
        rep.skip("peaks in correctness", "writer/peaks.py or scipy not importable")

    plan = SMOKE_PLAN if smoke else GPU_PLAN
    for name, (sides, by_precision, runner_batches) in plan.items():
        if not budget.fits(30 + RESERVE_S):
            rep.skip(f"model {name}", "time budget")
            continue
        model = lib.build(name, device)
        main_prec = "fp32" if smoke else "bf16"
        cl = _channels_last_probe(rep, name, model, max(sides), main_prec, device)
        for side in sides:
            flops = lib.flops_per_frame(model, side, device)
            rep.add("flops", {"model": name, "side": side, "tflop_per_frame": flops / 1e12})
            for precision, batches in by_precision.items():
                measure_bare(rep, budget, name, model, side, precision, batches, cl, device,
                             flops, ceiling)  # fmt: skip
            for batch in runner_batches:
                bare = _bare_fps(rep, name, side, main_prec, batch)
                measure_runner(rep, budget, name, model, side, main_prec, batch, cl, device, bare)
            runs = [
                r for r in rep.data.get("runner", []) if r["model"] == name and r["side"] == side
            ]
            if runs:
                best = max(runs, key=lambda r: r["fps"])
                measure_copies(rep, name, model, side, main_prec, best["batch"], cl, device,
                               best["fps"])  # fmt: skip
        if "trace" not in rep.data:
            write_trace(rep, model, min(sides), device, out)
        del model
        if not smoke:
            torch.cuda.empty_cache()
    if smoke:
        rep.skip("torch.compile", "cpu smoke")
    else:
        compile_probe(rep, budget, "default", 1920, "bf16", 8, args.compile_cap_s)
        compile_probe(rep, budget, "673m", 1920, "bf16", 4, args.compile_cap_s)
    watchdog.cancel()
    return _finish(rep, out, budget)


def _channels_last_probe(rep, name, model, side, precision, device) -> bool:
    """Channels-last against the default format at one point; the faster one is used for the
    model's series (the table says which)."""
    batch = 2 if device == "cpu" else 4
    fps = {}
    for cl in (False, True):
        eng = lib.engine(model, device, precision, channels_last=cl)
        fps[cl] = batch / lib.time_call(lib.bare_forward(eng, batch, side), device, TARGET_S)
    rep.add("layout", {"model": name, "side": side, "batch": batch, "fps_default": fps[False],
                       "fps_channels_last": fps[True]})  # fmt: skip
    return fps[True] > fps[False]


def _bare_fps(rep, name, side, precision, batch) -> float | None:
    rows = [r for r in rep.data.get("bare", []) if (r["model"], r["side"], r["precision"],
            r["batch"]) == (name, side, precision, batch)]  # fmt: skip
    return rows[0]["fps"] if rows else None


def _environment(device: str) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": sys.version.split()[0], "device": device}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, cuda=torch.version.cuda,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1))  # fmt: skip
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["device_name"] = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return env


def _finish(rep: Report, out: Path, budget: Budget) -> int:
    rows = rep.data.get("correctness", [])
    rep.data["correct"] = bool(rows) and all(r["pass"] for r in rows)
    rep.data["elapsed_s"] = budget.used()
    line = rep.json_line()
    (out / "gpu_check.json").write_text(line + "\n")
    print(
        f"done         {budget.used():.1f} s; correct={rep.data['correct']}; "
        f"skipped {len(rep.data['skipped'])} step(s)",
        flush=True,
    )
    print(line, flush=True)
    return 0 if rep.data["correct"] else 1


def _abort(rep: Report, out: Path) -> None:
    """The watchdog: a step overran the budget by 40 s; report what was measured and exit."""
    rep.data["aborted"] = "watchdog: a step overran the time budget by 40 s"
    line = rep.json_line()
    (out / "gpu_check.json").write_text(line + "\n")
    print(line, flush=True)
    os._exit(2)


TARGET_S, RESERVE_S = 0.6, 25.0

if __name__ == "__main__":
    sys.exit(main())
