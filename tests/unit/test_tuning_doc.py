"""docs/tuning.md's object-store formula and worked example agree with peaknet_pipeline.budget.

The formula block is budget.formula_lines(); the worked example is the output of the command
the doc shows (`peaknet-pipeline config budget ...`), recomputed here from the doc's own
arguments; the sentence after it is recomputed with budget.py too. When the code changes, the
failure prints the block to paste.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

from peaknet_pipeline.budget import (
    GiB,
    MiB,
    batch_bytes,
    budget_bytes,
    explain,
    format_bytes,
    formula_lines,
    in_flight,
)
from peaknet_pipeline.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "tuning.md"


def _indented_blocks(text: str) -> list[list[str]]:
    """The doc's code blocks (4-space indented), each as its lines without the indent; a blank
    line inside a block is "", blank lines around it are left out."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("    ") or (current is not None and not line.strip()):
            current = current if current is not None else []
            current.append(line[4:].rstrip() if line.strip() else "")
        elif current is not None:
            blocks.append(current)
            current = None
    blocks += [current] if current is not None else []
    return [_strip_blank_ends(b) for b in blocks]


def _strip_blank_ends(block: list[str]) -> list[str]:
    while block and not block[-1]:
        block.pop()
    return block


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(title)
    end = text.find("\n## ", start)
    return text[start : end if end > 0 else None]


def _worked_example() -> tuple[list[str], list[str]]:
    """(the doc's command's arguments, the doc's output lines)."""
    example = _section("**Worked example.**")
    blocks = [b for b in _indented_blocks(example) if b[0].startswith("peaknet-pipeline")]
    assert blocks, "the worked example starts with the command that prints it"
    block = blocks[0]
    command_lines = []
    for line in block:
        command_lines.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    args = shlex.split(" ".join(command_lines))
    assert args[:3] == ["peaknet-pipeline", "config", "budget"], args
    return args[3:], block[len(command_lines) :]


def _config_of(args: list[str]):
    path, overrides = None, []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in ("-c", "--config"):
            path = REPO / value
        else:
            assert flag == "--set", flag
            overrides.append(value)
    return load_config(path, overrides)


def test_the_formula_block_is_the_codes():
    blocks = _indented_blocks(_section("## 4. The object store"))
    block = next(b for b in blocks if b[0].startswith("records(q, N, x)"))
    expected = formula_lines()
    assert block == expected, "docs/tuning.md section 4 should read:\n" + "\n".join(
        "    " + line for line in expected
    )


def test_the_worked_example_is_what_the_command_prints():
    args, shown = _worked_example()
    cfg = _config_of(args)
    expected = explain(cfg, in_flight(cfg, batch_bytes(cfg)))
    assert shown == expected, "docs/tuning.md's worked example should read:\n" + "\n".join(
        "    " + line for line in expected
    )


def test_each_term_line_of_the_example_computes_its_own_value():
    """The factors shown multiply out to the value shown, which is the code's term."""
    args, _ = _worked_example()
    cfg = _config_of(args)
    flight = in_flight(cfg, batch_bytes(cfg))
    for line in explain(cfg, flight):
        name = line[:20].strip()
        if name not in flight.terms:
            continue
        left, right = line[20:].rsplit(" = ", 1)
        python = left.replace(" x ", " * ").replace(" MiB", " * MiB")
        value = eval(python, {"__builtins__": {}}, {"min": min, "ceil": math.ceil, "MiB": MiB})
        assert value == flight.terms[name] == float(right.removesuffix(" MiB")) * MiB, line


def test_the_sentence_after_the_example_is_recomputed():
    args, _ = _worked_example()
    example = _section("**Worked example.**")
    found = re.search(
        r"With queues of (\d+) records the total drops to ([\d.]+) GiB \(a store of ([\d.]+) GiB",
        " ".join(example.split()),
    )
    assert found, "the sentence about shorter queues is gone"
    records = int(found.group(1))
    cfg = _config_of(
        [*args, "--set", f"queue.q1.capacity_items={records}"]
        + ["--set", f"queue.q2.capacity_items={records}"]
    )
    total = in_flight(cfg, batch_bytes(cfg)).total
    store = total / cfg.ray.object_store_budget_fraction
    assert format_bytes(total) == f"{found.group(2)} GiB"
    assert format_bytes(math.ceil(store)) == f"{found.group(3)} GiB"
    assert budget_bytes(cfg, math.ceil(store)) >= total
    assert total < 3 * GiB  # the point of the sentence: shorter queues fit a smaller store


def test_the_logged_figure_is_the_demos():
    text = " ".join(_section("## 4. The object store").split())
    found = re.search(
        r"object store: the queues and buffers can hold (.*?\)) of a ([\d.]+ GiB) budget "
        r"\(ray.object_store_budget_fraction=0.6 of ([\d.]+) GiB\)",
        text,
    )
    assert found, "the logged line is gone"
    cfg = load_config(REPO / "examples" / "configs" / "demo.yaml")
    store = int(float(found.group(3)) * GiB)
    assert found.group(1) == in_flight(cfg, batch_bytes(cfg)).describe()
    assert found.group(2) == format_bytes(budget_bytes(cfg, store))
