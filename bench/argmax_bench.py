"""The two-class mask on the CPU at detector size: `class_index` (a comparison) against its
anchor, `logits.argmax(dim=1)` (a strided reduction over a dimension of size 2), on the padded
logits inference produces for a 1691x1691 frame (1696x1696 after padding to 32), one torch
thread as an inference actor has. Both are checked equal first.

    .venv/bin/python bench/argmax_bench.py [--batch 8] [--repeats 5] [--side 1691]

Prints ms per frame for each and the speed-up (median over repeats); the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from peaknet_pipeline.inference.engine import class_index
from peaknet_pipeline.inference.geometry import geometry


def per_frame_ms(fn, logits: torch.Tensor, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(logits)
        times.append((time.perf_counter() - started) * 1e3 / logits.shape[0])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--side", type=int, default=1691)
    args = parser.parse_args()
    torch.set_num_threads(1)
    geo = geometry((args.batch, 1, args.side, args.side), "center")
    shape = (geo.n, 2, geo.padded_height, geo.padded_width)
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    cropped = logits[:, :, geo.rows, geo.cols]
    if not torch.equal(class_index(cropped), cropped.argmax(dim=1).to(torch.uint8)):
        raise SystemExit("class_index differs from argmax")
    anchor = per_frame_ms(lambda x: x.argmax(dim=1).to(torch.uint8), cropped, args.repeats)
    fast = per_frame_ms(class_index, cropped, args.repeats)
    result = {
        "bench": "argmax",
        "frame": [args.side, args.side],
        "batch": args.batch,
        "argmax_ms_per_frame": round(statistics.median(anchor), 2),
        "class_index_ms_per_frame": round(statistics.median(fast), 2),
        "speedup": round(statistics.median(anchor) / statistics.median(fast), 1),
    }
    print(
        f"{args.side}x{args.side}, batch {args.batch}, 1 thread: argmax "
        f"{result['argmax_ms_per_frame']} ms/frame, class_index "
        f"{result['class_index_ms_per_frame']} ms/frame ({result['speedup']}x)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
