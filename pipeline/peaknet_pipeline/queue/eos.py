"""The one end-of-stream token of the pipeline.

A queue's get raises `EndOfStream` once every producer has closed and nothing is queued or
leased. Inside a stage, an instance of the same class is the last item of a hand-off between
two threads (a queue consumer's prefetch, the socket source's inbox), carrying why the stream
ended, or the error that ended it. One class, so "is this the end?" has one answer everywhere:
`isinstance(item, EndOfStream)`.
"""

from __future__ import annotations


class EndOfStream(Exception):
    """Nothing more will arrive: `reason` says why, `error` is the failure that ended the
    stream early (None for an ordinary end)."""

    def __init__(self, reason: str = "", error: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
