"""What escalation keeps, and for how long (run by `shared.retention.Retention`): the ids of
the lifecycle events already folded into the clocks go after `dedup_days`, when no topic can
deliver them again. (Events kept for a case whose routing has not come are pruned with the
fold, after the 30 days a dead letter is kept: `timers.fold_batch`.)"""

from __future__ import annotations

from shared.retention import Purge, seen_events_purge
from shared.settings import RetentionSettings


def purges(settings: RetentionSettings) -> list[Purge]:
    return [seen_events_purge("escalation", settings)]
