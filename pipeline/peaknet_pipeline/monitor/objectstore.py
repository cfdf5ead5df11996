"""How full the Ray object store is: bytes in use, bytes spilled to disk, and its capacity.

Ray has no public API for the store's use; the raylets report it through the same call
`ray memory --stats-only` makes (`ray._private.internal_api`). One call asks one raylet,
which aggregates every node. Sampled by the driver once per progress interval, never per batch.
The cluster is named by the address of the one this process is connected to: on a machine
where several Ray instances run (a shared workstation), Ray cannot guess which one is meant.

A raylet answers only once every worker process on every node has given it its own stats: one
worker that does not answer (stopped, swapping, wedged in a driver call) makes every read take
the whole READ_TIMEOUT_S. UsageReader therefore reads in a thread of its own, and the driver's
loop (stop signals, scaling, progress) waits for a read at most READ_WAIT_S.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0  # the raylet's answer, which waits for every worker's
READ_WAIT_S = 0.5  # what the driver's loop waits for a read once it has had one


@dataclass(frozen=True)
class ObjectStoreUsage:
    used_bytes: int  # in the stores of every node (primary copies and fetched copies)
    spilled_bytes: int  # written to disk since the cluster started
    capacity_bytes: int  # the stores' total size

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_warned = False


def object_store_usage() -> ObjectStoreUsage | None:
    """The cluster's object store use now, or None when Ray cannot say (logged once)."""
    global _warned
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    try:
        # This driver's own cluster: with no address Ray looks for one on the machine and
        # gives up when several run there (other users' instances, other runs).
        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        stats = get_memory_info_reply(state, timeout_seconds=READ_TIMEOUT_S).store_stats
    except Exception as exc:  # noqa: BLE001 - monitoring must never stop a run
        if not _warned:
            _warned = True
            log.warning("object store use cannot be read (%s); not sampled", exc)
        return None
    return ObjectStoreUsage(
        used_bytes=int(stats.object_store_bytes_used),
        spilled_bytes=int(stats.spilled_bytes_total),
        capacity_bytes=int(ray.cluster_resources().get("object_store_memory", 0)),
    )


class UsageReader:
    """object_store_usage() in a thread of its own, one read at a time. `read()` starts a read
    when none is under way and waits for it at most READ_WAIT_S (the whole READ_TIMEOUT_S
    before the first reading: the first sample must have one); a read that takes longer is
    left to finish, and meanwhile `read()` answers the newest reading Ray gave."""

    def __init__(
        self,
        wait_s: float = READ_WAIT_S,
        first_wait_s: float = READ_TIMEOUT_S,
        read: Callable[[], ObjectStoreUsage | None] | None = None,
    ) -> None:
        self.wait_s, self.first_wait_s = wait_s, first_wait_s
        self._read = read or object_store_usage
        self._thread: threading.Thread | None = None
        self._answer: list[ObjectStoreUsage | None] = []
        self._latest: ObjectStoreUsage | None = None
        self._read_once = False

    def read(self) -> ObjectStoreUsage | None:
        """The newest reading: this one when it came in time, else the one before (None when
        Ray could not say)."""
        if self._thread is None:
            answer: list[ObjectStoreUsage | None] = []
            self._answer = answer
            self._thread = threading.Thread(
                target=lambda: answer.append(self._read()),
                name="object-store-read",
                daemon=True,
            )
            self._thread.start()
            self._thread.join(self.wait_s if self._read_once else self.first_wait_s)
        if self._thread.is_alive():
            return self._latest
        self._thread, self._read_once = None, True
        self._latest = self._answer[0] if self._answer else None
        return self._latest
