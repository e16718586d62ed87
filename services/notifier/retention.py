"""What the notifier keeps, and for how long (run by `shared.retention.Retention`).

- A resident's contact (kept only with consent, to tell them about their case) is erased
  `personal_data_days` after the case closed; the row stays, empty, so later events of the
  case know there is nobody to tell. A reopened case is not closed.
- Messages to residents (their address and text) are deleted `personal_data_days` after they
  were due; pending ones are never touched.
- Delivered (or disabled) entries of the delivery log — webhooks, departments' e-mail,
  workers' SMS — go after `dedup_days`: no topic can deliver their event again by then.
  Dead ones stay until an operator replays them (`griddispatch deliveries`).
"""

from __future__ import annotations

from shared.retention import Purge
from shared.settings import RetentionSettings


def purges(settings: RetentionSettings) -> list[Purge]:
    return [
        Purge(
            "resident contacts",
            settings.personal_data_kept,
            """UPDATE notifier.residents SET email = NULL, phone = NULL
               WHERE case_id IN (
                   SELECT r.case_id FROM notifier.residents r
                   JOIN notifier.cases c USING (case_id)
                   WHERE (r.email IS NOT NULL OR r.phone IS NOT NULL) AND c.closed_at < $1
                   LIMIT $2 FOR UPDATE OF r SKIP LOCKED)
               RETURNING 1""",
        ),
        Purge(
            "resident messages",
            settings.personal_data_kept,
            """DELETE FROM notifier.resident_messages WHERE id IN (
                   SELECT id FROM notifier.resident_messages
                   WHERE state <> 'pending' AND send_after < $1
                   LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1""",
        ),
        Purge(
            "delivery log",
            settings.dedup_kept,
            """DELETE FROM notifier.deliveries WHERE id IN (
                   SELECT id FROM notifier.deliveries
                   WHERE state IN ('delivered', 'disabled') AND created_at < $1
                   LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1""",
        ),
    ]
