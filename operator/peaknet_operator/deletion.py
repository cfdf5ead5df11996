"""Deleting a service drains it before its pods go.

Deleting the RayCluster sends SIGTERM to every pod at once: the driver would then drain with
its actors' pods going away under it. So the resource's own deletion waits: kopf keeps its
finalizer on the resource (settings.persistence.finalizer) while an `on.delete` handler raises
`kopf.TemporaryError(delay=...)`, and removes it once the handler returns (kopf docs, "Error
handling": a TemporaryError retries the handler after its delay; "Troubleshooting": deletion
handlers run on the object marked for deletion and the finalizer is then removed; kopf
_core/reactor/processing.py: process_resource_causes, 1.45). Meanwhile the API server keeps
the resource with metadata.deletionTimestamp set, the children stay (their owner still
exists), and the driver, which reads its resource every few seconds (peaknet_pipeline.kube),
stops ingest as `peaknet-pipeline stop` does: it drains, closes the current DAQ run's files,
writes the index and publishes its end in status.driver. Then this handler returns and the
garbage collector deletes the children (owner references). The wait is bounded by the pods'
termination grace period (render.raycluster.grace_period_s): a driver that never answers does
not keep the resource forever. kopf stops the status timer once the deletion has begun
(daemons and timers end when the object is marked for deletion), so no driver is restarted
meanwhile.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import kopf

from .observation import CallFailed, Target, bare_observation, read_ray
from .render.raycluster import grace_period_s
from .service import drain_wait

DRAIN_POLL_S = 2.0  # how often a deletion looks again whether the service's driver has drained


def drain_before_deletion(
    t: Target, logger: logging.Logger, retry: int, poll_s: float = DRAIN_POLL_S
) -> None:
    """Return when the service's deletion may go on (service.drain_wait); else raise
    kopf.TemporaryError to look again in `poll_s`. The first wait posts a `Draining` event."""
    spec = t.acceptance.spec
    try:
        obs = read_ray(t, bare_observation(t, None))
    except CallFailed as failed:
        raise kopf.TemporaryError(failed.outcome.message, delay=poll_s) from None
    deletion = t.body.get("metadata", {}).get("deletionTimestamp")
    now = datetime.now(timezone.utc)
    left = drain_wait(obs.rayjob, obs.driver, deletion, grace_period_s(spec) or 0, now)
    if left is None:
        logger.info("deleting: the driver is not running; the children go now")
        return
    if retry == 0:
        message = f"waiting up to {left:.0f} s for the driver to drain before the pods go"
        kopf.event(t.body, type="Normal", reason="Draining", message=message)
    raise kopf.TemporaryError("waiting for the driver to drain", delay=min(poll_s, left))
