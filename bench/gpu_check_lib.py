"""Measurement pieces of the GPU check (bench/gpu_check.py): presets, synthetic frames, the
runner driven from pre-staged pinned slots, timers, the correctness comparison, peaks.

Imports only torch, numpy, the model package and the inference engine/runners (no Ray, no
pydantic), so it runs on a bare GPU machine. Everything works on the CPU too (the smoke form).
"""

from __future__ import annotations

import copy
import importlib.util
import queue
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peaknet_pipeline.inference.engine import Engine, class_index
from peaknet_pipeline.inference.geometry import geometry
from peaknet_pipeline.inference.runners import make_runner, pump
from peaknet_pipeline.model import PeakNet, PeakNetSpec, load_weights, read_state_dict
from peaknet_pipeline.queue.eos import EndOfStream

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
SPEC_FIELDS = ("hidden_sizes", "depths", "bifpn_num_blocks", "bifpn_num_features")
SPEC_FIELDS += ("seg_out_channels", "num_classes", "uses_learned_upsample")
# Logit error allowed, as max|gpu - cpu| / max|cpu|: a defect (a race between streams, wrong
# padding) shows as O(1); rounding of each precision through ~100 layers stays well below.
TOLERANCE = {"fp32": 1e-3, "tf32": 2e-2, "fp16": 2e-2, "bf16": 1e-1}


def preset(name: str) -> tuple[PeakNetSpec, Path | None]:
    """The architecture of examples/configs/<name>.yaml (demo, default, 673m) and the weights
    it names (only the demo's are in the repository). One source of truth for the presets."""
    import yaml

    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]
    spec = PeakNetSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()
                          if k in SPEC_FIELDS})  # fmt: skip
    weights = cfg.get("weights_path")
    return spec, (ROOT / weights if weights else None)


def build(name: str, device: str, seed: int = 0) -> torch.nn.Module:
    """The preset's PeakNet built directly on `device` (a 673M model initialises in seconds on
    a GPU, minutes on a CPU), seeded, with the repository's weights when the preset has them."""
    spec, weights = preset(name)
    torch.manual_seed(seed)
    with torch.device(device):
        model = PeakNet(spec)
    if weights is not None:
        load_weights(model, read_state_dict(weights), weights)
    return model.eval()


def frames(n: int, side: int, peaks: int = 30, seed: int = 0) -> np.ndarray:
    """(n, 1, side, side) float32: Poisson background (mean 10) and Gaussian peaks of height 200
    and sigma 1 px, the random source's defaults (what the demo weights were trained on)."""
    rng = np.random.default_rng(seed)
    out = rng.poisson(10.0, (n, 1, side, side)).astype(np.float32)
    yy, xx = np.mgrid[-4:5, -4:5]
    for frame in out[:, 0]:
        for r, c in rng.uniform(6, side - 6, (peaks, 2)):
            ri, ci = int(r), int(c)
            blob = 200.0 * np.exp(-((yy - (r - ri)) ** 2 + (xx - (c - ci)) ** 2) / 2.0)
            frame[ri - 4 : ri + 5, ci - 4 : ci + 5] += blob
    return out


def set_tf32(on: bool) -> None:
    """TF32 in cuDNN convolutions and matmuls. PyTorch's default has it ON for convolutions,
    so the pipeline's "fp32" on an Ampere-or-later GPU is TF32 unless this is turned off."""
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def engine(model: torch.nn.Module, device: str, precision: str, output: str = "mask",
           channels_last: bool = False) -> Engine:  # fmt: skip
    """An Engine on `model` with its memory format set both ways (Engine only converts to
    channels-last, in place, so a model shared between engines must be set back)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    prec = "fp32" if precision == "tf32" else precision
    return Engine(model, device, prec, output=output, channels_last=channels_last)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: str, target_s: float, warmup: int = 2,
              max_iters: int = 50) -> float:  # fmt: skip
    """Seconds per call: `warmup` calls, then enough calls to fill about `target_s` (at least
    2), timed with CUDA events on the GPU, the wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    iters = int(min(max_iters, max(2, target_s / max(time.perf_counter() - t0, 1e-6))))
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def matmul_ceiling(device: str, side: int) -> float:
    """bf16 matrix-product TFLOP/s on this device: the ceiling model FLOP utilisation is
    measured against (a dense product of `side`^3 runs near the tensor cores' peak)."""
    a = torch.randn(side, side, device=device, dtype=torch.bfloat16)
    b = torch.randn(side, side, device=device, dtype=torch.bfloat16)
    s = time_call(lambda: a @ b, device, target_s=0.5, warmup=3)
    return 2 * side**3 / s / 1e12


def flops_per_frame(model: torch.nn.Module, side: int, device: str) -> float:
    """Forward FLOPs of one frame (torch's FlopCounterMode: convolutions and matmuls, 2 per
    multiply-add), counted on a real batch of 1 under bf16 autocast on the GPU."""
    from torch.utils.flop_counter import FlopCounterMode

    eng = engine(model, device, "bf16" if device.startswith("cuda") else "fp32")
    geo = geometry((1, 1, side, side), "center")
    with FlopCounterMode(display=False) as counter:
        eng.compute(torch.zeros(geo.input_shape, device=device), geo)
    return float(counter.get_total_flops())


def bare_forward(eng: Engine, batch: int, side: int) -> Callable[[], Any]:
    """The model alone on a device-resident batch (no normalisation, no mask, no copies)."""
    geo = geometry((batch, 1, side, side), "center")
    x = torch.randn(geo.input_shape, device=eng.device)
    if eng.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> Any:
        with torch.inference_mode(), eng.autocast():
            return eng.model(x)

    return run


def staged_slots(runner: Any, images: np.ndarray, depth: int) -> list:
    """`depth` slots of the runner (pinned on CUDA), each staged once with `images`."""
    geo = geometry(images.shape, "center")
    slots = [runner.new_slot(i) for i in range(depth)]
    for slot in slots:
        slot.stage(images, geo)
    return slots


def drive(runner: Any, slots: list, batches: int) -> tuple[float, list[np.ndarray]]:
    """Seconds to push `batches` batches through the project's `pump` with this runner, the
    slots circulating as an actor's do (a finished slot is handed out again); the outputs."""
    ready: queue.Queue = queue.Queue()
    handed = min(len(slots), batches)
    for slot in slots[:handed]:
        ready.put(slot)
    outputs: list[np.ndarray] = []

    def finish(slot: Any) -> None:
        nonlocal handed
        outputs.append(runner.finish(slot))
        if handed < batches:
            handed += 1
            ready.put(slot)
        elif len(outputs) == batches:
            ready.put(EndOfStream("gpu check: all batches done"))

    def issue(slot: Any) -> bool:
        runner.issue(slot)
        return True

    sync(str(runner.device))
    t0 = time.perf_counter()
    pump(ready, runner.max_in_flight, issue, finish)
    return time.perf_counter() - t0, outputs


def copy_times(eng: Engine, images: np.ndarray) -> tuple[dict[str, float], Any, Any]:
    """Seconds for the host-to-device copy of a staged batch, the engine's compute on the
    device, and the copy of its mask back, each alone (CUDA events): the serial sum a runner
    overlaps; also the batch's mask and images on the device."""
    runner = make_runner(eng)
    (slot,) = staged_slots(runner, images, 1)
    host = slot.host_input()
    dev = torch.empty(host.shape, device=eng.device)
    out = eng.compute(dev.clone(), slot.geo)
    back = torch.empty(out.shape, dtype=out.dtype, pin_memory=eng.device.type == "cuda")
    d = str(eng.device)
    times = {
        "h2d_s": time_call(lambda: dev.copy_(host, non_blocking=True), d, 0.2),
        "compute_s": time_call(lambda: eng.compute(dev.clone(), slot.geo), d, 0.3),
        "d2h_s": time_call(lambda: back.copy_(out, non_blocking=True), d, 0.2),
    }
    return times, out, torch.from_numpy(images).to(eng.device)


def writer_find_peaks() -> Callable | None:
    """The writer's CPU peak finder, loaded from its file: `peaknet_pipeline.writer`'s
    __init__ imports the config and Ray, writer/peaks.py itself only numpy and scipy."""
    path = ROOT / "pipeline" / "peaknet_pipeline" / "writer" / "peaks.py"
    try:
        spec = importlib.util.spec_from_file_location("gpu_check_writer_peaks", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclass looks the module up there
        spec.loader.exec_module(module)
        import scipy.ndimage  # noqa: F401 - find_peaks imports it when called
    except Exception:  # noqa: BLE001 - reported as "peaks: not compared"
        return None
    return module.find_peaks


def device_peaks() -> Callable | None:
    """Device-side peaks (issue 22 item 3, inference/peaks.py `find_batch_peaks`) when that
    module imports here; None otherwise (it reaches writer/peaks.py through the writer
    package, whose __init__ imports the config: on a machine without pydantic it is absent)."""
    try:
        from peaknet_pipeline.inference.peaks import find_batch_peaks
    except ImportError:
        return None
    return find_batch_peaks


def device_peak_bytes(mask: torch.Tensor, images: torch.Tensor) -> float | None:
    """Bytes per frame a batch's peak lists take when copied back instead of its masks (the
    device-side peaks' record), or None where device-side peaks are not importable."""
    find = device_peaks()
    if find is None:
        return None
    return find(mask.reshape(images.shape), images).nbytes / images.shape[0]


def compare(ref_logits: torch.Tensor, logits: np.ndarray, mask: np.ndarray, images: np.ndarray,
            precision: str, find_peaks: Callable | None) -> dict[str, Any]:  # fmt: skip
    """A device run against the CPU fp32 reference: logit error relative to the reference's
    largest magnitude, masks equal on every pixel whose reference margin |l1 - l0| exceeds
    twice the logit tolerance, and (frames whose masks are equal) the writer's peaks equal."""
    ref = ref_logits.float().numpy().reshape(logits.shape)
    scale = float(np.abs(ref).max()) or 1.0
    err = float(np.abs(logits - ref).max()) / scale
    tol = TOLERANCE[precision]
    ref_mask = class_index(ref_logits).numpy().reshape(mask.shape)
    margin = np.abs(ref[:, :, 1] - ref[:, :, 0])
    clear = margin > 2 * tol * scale
    differ = mask != ref_mask
    row = {
        "precision": precision,
        "logits_rel_err": err,
        "tolerance": tol,
        "clear_fraction": float(clear.mean()),
        "mask_diff_clear": int((differ & clear).sum()),
        "mask_diff_unclear": int((differ & ~clear).sum()),
    }
    if find_peaks is not None:
        same = [i for i in range(mask.shape[0]) if not differ[i].any()]
        peak_pairs = [(find_peaks(images[i], ref_mask[i]), find_peaks(images[i], mask[i]))
                      for i in same]  # fmt: skip
        row["peaks_ref"] = sum(a.n for a, _ in peak_pairs)
        row["peaks_equal"] = all(
            a.n == b.n and np.array_equal(a.row, b.row) and np.array_equal(a.col, b.col)
            for a, b in peak_pairs
        )
        row["peak_frames_compared"] = len(same)
    row["pass"] = err <= tol and row["mask_diff_clear"] == 0 and row.get("peaks_equal", True)
    return row


def correctness(name: str, side: int, n: int, device: str, precisions: list[str],
                find_peaks: Callable | None) -> list[dict[str, Any]]:  # fmt: skip
    """The project's runner on `device` in each precision against the CPU fp32 engine (TF32
    off), on the same frames, through the same padding, for preset `name`."""
    cpu_model = build(name, "cpu")
    images = frames(n, side)
    geo = geometry(images.shape, "center")
    x = torch.zeros(geo.input_shape)
    x[:, 0, geo.rows, geo.cols] = torch.from_numpy(images[:, 0])
    ref = engine(cpu_model, "cpu", "fp32", output="logits").compute(x, geo)
    model = copy.deepcopy(cpu_model).to(device)
    rows = []
    for precision in precisions:
        if device.startswith("cuda"):
            set_tf32(precision == "tf32")
        outs = {}
        for output in ("logits", "mask"):
            runner = make_runner(engine(model, device, precision, output=output))
            outs[output] = drive(runner, staged_slots(runner, images, 2), 2)[1][-1]
        row = compare(ref, outs["logits"], outs["mask"], images, precision, find_peaks)
        dev_find = device_peaks()
        if dev_find is not None and find_peaks is not None:
            row["device_peaks_equal"] = _device_peaks_equal(
                dev_find, find_peaks, ref, outs, images, model
            )
            row["pass"] = row["pass"] and row["device_peaks_equal"] is not False
        rows.append({"model": name, "side": side, "frames": n, **row})
    if device.startswith("cuda"):
        set_tf32(True)
    return rows


def _device_peaks_equal(dev_find, find_peaks, ref, outs, images, model) -> bool | None:
    """Device-side peaks of the device's mask (on the device) against the writer's peaks of
    the same mask on the CPU, frames by frame; None when no frame's mask equals the reference."""
    device = next(model.parameters()).device
    mask = outs["mask"]
    got = dev_find(torch.from_numpy(mask).to(device), torch.from_numpy(images).to(device))
    lists = got.peak_lists()
    for i in range(mask.shape[0]):
        want = find_peaks(images[i], mask[i])
        have = lists[i]
        if want.n != have.n or not (
            np.allclose(want.row, have.row, atol=1e-6) and np.allclose(want.col, have.col, atol=1e-6)
            and np.array_equal(want.npix, have.npix)
        ):  # fmt: skip
            return False
    return True
