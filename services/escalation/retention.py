"""What escalation keeps, and for how long (run by `shared.retention.Retention`):

- the ids of the lifecycle events already folded into the clocks go after `dedup_days`, when
  no topic can deliver them again;
- timers that fired or were cancelled go once their case's clock has not changed for
  `dedup_days` (what they did is in the event stream; only pending timers are ever read).
  The clock itself stays: a closed case can be reopened, and its clock resumes.

(Events kept for a case whose routing has not come are pruned with the fold, after the 30 days
a dead letter is kept: `timers.fold_batch`.)"""

from __future__ import annotations

from shared.retention import Purge, seen_events_purge
from shared.settings import RetentionSettings


def purges(settings: RetentionSettings) -> list[Purge]:
    return [
        seen_events_purge("escalation", settings),
        Purge(
            "finished timers",
            settings.dedup_kept,
            """DELETE FROM escalation.timers WHERE id IN (
                   SELECT t.id FROM escalation.cases c
                   JOIN escalation.timers t ON t.case_id = c.case_id AND t.state <> 'pending'
                   WHERE c.updated_at < $1 AND (t.fired_at IS NULL OR t.fired_at < $1)
                   LIMIT $2 FOR UPDATE OF t SKIP LOCKED)
               RETURNING 1""",
        ),
    ]
