"""What to change when a config is over its object-store budget: the one-line message of the
start-up check (peaknet_pipeline.budget computes the bytes; this module finds the advice).

The advice is checked, not guessed: every setting it names, at the value it names, makes the
config fit (on its own, or together with the others it lists), and an embedded store is only
offered when it leaves the machine room for the processes themselves.
"""

from __future__ import annotations

from dataclasses import replace

from .budget import InFlight, budget_bytes, config_section, format_bytes, in_flight, store_needed
from .config import PipelineConfig

# Most of a machine's memory the advice offers as an embedded store: the rest is for the
# processes themselves (torch and the model, the batches being worked on, the writers' files).
MAX_STORE_FRACTION_OF_MACHINE = 0.5
# Settings the advice tries lowering (with the source's frames per batch:
# BatchBytes.frames_setting), and the lowest value of each.
KNOBS = (
    ("queue.q1.capacity_items", 1),
    ("queue.q2.capacity_items", 1),
    ("inference.buffer_depth", 1),
    ("writer.max_pending_batches", 1),
    ("writer.events_per_file", 1),
)


def budget_problem(
    cfg: PipelineConfig,
    flight: InFlight,
    store_bytes: int,
    embedded: bool,
    machine_bytes: int | None = None,
    default_store: bool = False,
) -> str | None:
    """None when `flight` fits the budget; else one line naming the terms, the batch, and
    advice that holds: every setting that fits on its own (at its largest value that does),
    else settings that fit together; and a store that fits, unless an embedded one would take
    more than MAX_STORE_FRACTION_OF_MACHINE of `machine_bytes` (then it says so instead).
    `default_store`: the store is Ray's default for this machine (none was configured)."""
    budget = budget_bytes(cfg, store_bytes)
    if flight.total <= budget:
        return None
    fraction = cfg.ray.object_store_budget_fraction
    origin = ""
    if default_store:
        from ray._private import ray_constants

        share = ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION
        origin = f" (Ray's default for this machine: {share:.0%} of its available memory)"
    return (
        f"object store budget: this config can hold {flight.describe()} in Ray's object "
        f"store at once, more than the {format_bytes(budget)} that "
        f"ray.object_store_budget_fraction={fraction:g} allows of the "
        f"{format_bytes(store_bytes)} store{origin}; a batch is {flight.batch.describe()}; "
        + _advice(cfg, flight, store_bytes, embedded, machine_bytes)
    )


def _advice(
    cfg: PipelineConfig,
    flight: InFlight,
    store_bytes: int,
    embedded: bool,
    machine_bytes: int | None,
) -> str:
    need = store_needed(cfg, flight.total)
    store, note = None, ""
    if not embedded:
        store = f"a cluster object store of at least {format_bytes(need)}"
    elif machine_bytes is None or need <= machine_bytes * MAX_STORE_FRACTION_OF_MACHINE:
        store = f"ray.object_store_memory_bytes={need} ({format_bytes(need)})"
    else:
        note = (
            f"; no larger store is offered: one that holds it ({format_bytes(need)}) would take "
            f"more than {MAX_STORE_FRACTION_OF_MACHINE:.0%} of this machine's "
            f"{format_bytes(machine_bytes)}"
        )
    singles = [f"{path}={value}" for path, value in fitting_values(cfg, flight, store_bytes)]
    if singles:
        return "each of these fits on its own: " + "; ".join(singles + [store] * bool(store)) + note
    together = fitting_together(cfg, flight, store_bytes)
    if together:
        advice = "no one setting fits on its own; these together fit: " + ", ".join(
            f"{path}={value}" for path, value in together
        )
    else:
        advice = "no setting fits, not even every one at its lowest"
    return advice + (f"; or {store}" if store else "") + note


def _knobs(flight: InFlight) -> list[tuple[str, int]]:
    """KNOBS, and the setting of the frames per batch where there is one."""
    frames = flight.batch.frames_setting
    return [*KNOBS, (frames, 1)] if frames else list(KNOBS)


def _get(cfg: PipelineConfig, path: str) -> int:
    section, _, name = path.rpartition(".")
    return getattr(config_section(cfg, section), name)


def _set(cfg: PipelineConfig, path: str, value: int) -> None:
    """Raises ValueError when the config refuses the value (e.g. fewer records than shards)."""
    section, _, name = path.rpartition(".")
    setattr(config_section(cfg, section), name, value)


def _total(trial: PipelineConfig, flight: InFlight) -> int:
    """The bytes `trial` holds: `flight`'s batch, with the trial's frames per batch."""
    batch = flight.batch
    if batch.frames_setting:
        batch = replace(batch, frames=_get(trial, batch.frames_setting))
    return in_flight(trial, batch, "copies" in flight.terms).total


def _largest_fitting(
    trial: PipelineConfig, path: str, lowest: int, highest: int, flight: InFlight, budget: int
) -> int | None:
    """The largest value of `path` from `highest` down to `lowest` with which `trial` fits
    (`trial` is left at it); None if none does."""
    for value in range(highest, lowest - 1, -1):
        try:
            _set(trial, path, value)
        except ValueError:  # lower values are refused too
            return None
        if _total(trial, flight) <= budget:
            return value
    return None


def fitting_values(cfg: PipelineConfig, flight: InFlight, store_bytes: int) -> list[tuple]:
    """(setting, value) pairs: for each knob, the largest value below the current one that
    makes the run fit when only that setting changes (knobs that cannot are left out)."""
    budget = budget_bytes(cfg, store_bytes)
    fits = []
    for path, lowest in _knobs(flight):
        trial = cfg.model_copy(deep=True)
        value = _largest_fitting(trial, path, lowest, _get(cfg, path) - 1, flight, budget)
        if value is not None:
            fits.append((path, value))
    return fits


def fitting_together(cfg: PipelineConfig, flight: InFlight, store_bytes: int) -> list[tuple]:
    """(setting, value) pairs that make the run fit together, for when no one setting does:
    halve the setting whose halving frees the most bytes until it fits, then raise each back
    to its largest value that still fits with the others. Empty: not even every knob at its
    lowest fits."""
    budget, knobs = budget_bytes(cfg, store_bytes), _knobs(flight)
    trial = cfg.model_copy(deep=True)
    while _total(trial, flight) > budget:
        best: tuple[int, PipelineConfig] | None = None
        for path, lowest in knobs:
            if _get(trial, path) <= lowest:
                continue
            candidate = trial.model_copy(deep=True)
            try:
                _set(candidate, path, max(lowest, _get(trial, path) // 2))
            except ValueError:
                continue
            total = _total(candidate, flight)
            if best is None or total < best[0]:
                best = (total, candidate)
        if best is None:
            return []
        trial = best[1]
    # Each back up, as far as the others allow; the frames per batch and the buffers first
    # (they keep the device busy), the queues' depth last (it only absorbs jitter).
    for path, _ in reversed(knobs):
        _largest_fitting(trial, path, _get(trial, path), _get(cfg, path), flight, budget)
    return [(path, _get(trial, path)) for path, _ in knobs if _get(trial, path) != _get(cfg, path)]
