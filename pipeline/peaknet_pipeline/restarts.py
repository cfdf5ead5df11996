"""When a failed actor is replaced: a budget per role, with back-off.

Pure bookkeeping (the driver does the restarting, stages.py): the first restart of a role
waits `backoff_s`, each further one twice as long as the one before, and a role that has used
its budget (`runtime.restarts.<role>`) is not restarted again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .config.models import RestartsConfig


@dataclass
class RestartBudget:
    cfg: RestartsConfig
    used: Counter = field(default_factory=Counter)

    def limit(self, role: str) -> int:
        return getattr(self.cfg, role)

    def take(self, role: str, now: float) -> float | None:
        """The time a replacement for a failed actor of `role` may start, or None when the
        role has no restarts left."""
        if self.used[role] >= self.limit(role):
            return None
        delay = self.cfg.backoff_s * 2 ** self.used[role]
        self.used[role] += 1
        return now + delay

    def left(self, role: str) -> int:
        return self.limit(role) - self.used[role]
