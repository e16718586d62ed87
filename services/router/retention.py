"""What the router keeps, and for how long (run by `shared.retention.Retention`).

- The decision log and the lifecycle events folded into the open-case counts recognise a
  message delivered again; no topic keeps a message longer than its dead-letter topic
  (30 days), so after `dedup_days` they can go.
- A case's facts keep the care groups of its reporter (they raise the priority of a reroute)
  and the description; `personal_data_days` after the case was resolved or closed the care
  groups are erased and contacts written into the description masked.
"""

from __future__ import annotations

from shared.retention import Purge, masked_fields, seen_events_purge
from shared.settings import RetentionSettings

# A case's facts without the care groups, and with contacts masked in the description.
FORGET_PERSONAL_FACTS = masked_fields("facts - 'care_groups'", ["description"])


def purges(settings: RetentionSettings) -> list[Purge]:
    return [
        Purge(
            "decision log",
            settings.dedup_kept,
            """DELETE FROM router.decisions WHERE source_event_id IN (
                   SELECT source_event_id FROM router.decisions WHERE decided_at < $1
                   LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1""",
        ),
        seen_events_purge("router", settings),
        Purge(
            "care flags",
            settings.personal_data_kept,
            f"""UPDATE router.cases SET facts = {FORGET_PERSONAL_FACTS}
               WHERE case_id IN (
                   SELECT case_id FROM router.cases
                   WHERE NOT open AND facts ? 'care_groups' AND updated_at < $1
                   LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1""",
        ),
    ]
