"""How full the Ray object store is: bytes in use, bytes spilled to disk, and its capacity.

Ray has no public API for the store's use; the raylets report it through the same call
`ray memory --stats-only` makes (`ray._private.internal_api`). One call asks one raylet,
which aggregates every node. Sampled by the driver once per progress interval, never per batch.
The cluster is named by the address of the one this process is connected to: on a machine
where several Ray instances run (a shared workstation), Ray cannot guess which one is meant.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)


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
        stats = get_memory_info_reply(state, timeout_seconds=5.0).store_stats
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
