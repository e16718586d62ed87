"""What intake keeps, and for how long (run by `shared.retention.Retention`).

- A closed case's personal data — the reporter's contact, whom it was reported on behalf of,
  the care and community-correction flags — is erased `personal_data_days` after the case's
  last change; the case itself (what, where, when, who handled it, the timeline) stays for the
  city's statistics. `personal_data_erased_at` records when. A reopened case is not closed,
  so its data stays while it is open again.
- The answers kept for retried `Idempotency-Key`s go after `idempotency_hours`: a retry after
  that is a new request.
"""

from __future__ import annotations

from datetime import timedelta

from shared.retention import Purge, personal_data
from shared.settings import RetentionSettings


def purges(settings: RetentionSettings) -> list[Purge]:
    return [
        Purge(
            "personal data",
            personal_data(settings),
            """UPDATE intake.cases SET reporter = NULL, on_behalf_of = NULL,
                   sensitivity = '{}'::jsonb, personal_data_erased_at = now()
               WHERE case_id IN (
                   SELECT case_id FROM intake.cases
                   WHERE status = 'closed' AND personal_data_erased_at IS NULL
                     AND updated_at < $1
                   LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1""",
        ),
        Purge(
            "idempotency keys",
            timedelta(hours=settings.idempotency_hours),
            """DELETE FROM intake.idempotency_keys WHERE (key_owner, idem_key) IN (
                   SELECT key_owner, idem_key FROM intake.idempotency_keys
                   WHERE created_at < $1
                   LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1""",
        ),
    ]
