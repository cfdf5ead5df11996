"""Failures as users read them: one clean line naming the cause.

An exception raised inside a Ray actor reaches the driver wrapped: `RayTaskError(...)` whose
text starts with a coloured `ray::Class.method()` header and a traceback, while the real
message (`source.replay.paths[0] ...: no such file`) is on its last line. The summary, the
report and the Kubernetes status all show `describe(exc)` instead: the original exception's
type and its message, with no terminal colour codes.
"""

from __future__ import annotations

import re

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
EXIT_DETAIL = re.compile(r"Worker exit detail: (.+?\.)(\s|$)")
MAX_LINE = 300


class StartupError(RuntimeError):
    """The pipeline could not start: a missing input file, no Ray cluster, an actor that
    failed to get ready. Its message is one line naming the field, stage or address."""


def _line(text: str, last: bool = False) -> str:
    lines = [line.strip() for line in ANSI.sub("", text).splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]) if lines else ""


def describe(exc: BaseException) -> str:
    """`Type: message` of the exception that actually happened, on one line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return describe(cause)  # RayTaskError wraps what the actor raised
    name = type(exc).__name__
    text = ANSI.sub("", str(exc))
    if "error raised in its creation task" in text:  # the constructor raised: last line
        line = f"{_line(text, last=True)} (while starting the actor)"
    elif name in ("ActorDiedError", "RayActorError", "ActorUnavailableError"):
        detail = EXIT_DETAIL.search(text)
        why = detail.group(1) if detail else _line(text)
        line = f"{name}: the actor's process died ({why})"
    elif name.startswith("RayTaskError"):  # no cause attached: the traceback ends with it
        line = _line(text, last=True)
    else:
        message = _line(text)
        line = f"{name}: {message}" if message else name
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."
