"""The stage contract in code: every stage actor class answers the calls the driver makes
(records.StageProtocol), with no arguments, so start-up, supervision and shutdown can treat
the three roles alike."""

from __future__ import annotations

import inspect

import pytest

from peaknet_pipeline.inference.actor import InferenceActor
from peaknet_pipeline.records import ReadyInfo, StageProtocol
from peaknet_pipeline.sources.base import IngestActor
from peaknet_pipeline.writer.actor import WriterActor

CALLS = ("ready", "run", "stats", "stop")


def contract_breaches(cls: type) -> list[str]:
    """What `cls` lacks of StageProtocol: a call missing, or one that needs arguments."""
    breaches = []
    for name in CALLS:
        method = getattr(cls, name, None)
        if not callable(method):
            breaches.append(f"{name}: missing")
            continue
        params = list(inspect.signature(method).parameters.values())[1:]  # after self
        if any(
            p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params
        ):
            breaches.append(f"{name}: needs arguments")
    return breaches


def test_the_protocol_names_the_four_calls():
    declared = {n for n, v in vars(StageProtocol).items() if callable(v) and not n.startswith("_")}
    assert declared == set(CALLS)


@pytest.mark.parametrize("cls", [IngestActor, InferenceActor, WriterActor])
def test_every_stage_actor_class_answers_the_stage_calls(cls):
    assert contract_breaches(cls) == []
    assert issubclass(cls, StageProtocol)
    assert inspect.signature(cls.ready).return_annotation in (ReadyInfo, "ReadyInfo")


def test_a_class_missing_a_call_breaks_the_contract():
    class NoStop:
        def ready(self) -> ReadyInfo: ...

        def run(self) -> dict: ...

        def stats(self) -> dict: ...

    class RunNeedsArgument(NoStop):
        def run(self, frames: int) -> dict: ...

        def stop(self) -> None: ...

    assert not issubclass(NoStop, StageProtocol)
    assert contract_breaches(NoStop) == ["stop: missing"]
    assert contract_breaches(RunNeedsArgument) == ["run: needs arguments"]
