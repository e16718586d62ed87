"""What intake keeps, and for how long (run by `shared.retention.Retention`).

- A closed case's personal data — the reporter's contact, whom it was reported on behalf of,
  the care and community-correction flags, and phone numbers and e-mail addresses written
  into its description and its timeline's notes — is erased `personal_data_days` after the
  case's last change; the case itself (what, where, when, who handled it, the timeline)
  stays for the city's statistics. `personal_data_erased_at` records when. A reopened case
  is not closed, so its data stays while it is open again.
- The answers kept for retried `Idempotency-Key`s go after `idempotency_hours`: a retry after
  that is a new request.
"""

from __future__ import annotations

from shared.retention import Purge, masked, masked_fields
from shared.settings import RetentionSettings

# Free-text fields of the timeline that residents (or staff quoting them) write.
TIMELINE_TEXTS = ("note", "reason", "comment")


def erasing(cases: str, at: str, *, touch: bool = False) -> str:
    """One statement erasing the personal data of the cases the subquery `cases` selects (at
    the SQL time `at`; `touch`: it also counts as the case's latest change): the reporter's
    contact, whom it was reported for, the care flags, and contacts and the reporter's name
    written into the description and the timeline's texts. One row per case."""
    updated = f", updated_at = {at}" if touch else ""
    return f"""WITH target AS (
            SELECT case_id, reporter->>'name' AS name FROM intake.cases
            WHERE case_id IN ({cases})
        ), erased AS (
            UPDATE intake.cases c SET reporter = NULL, on_behalf_of = NULL,
                sensitivity = '{{}}'::jsonb, description = {masked("c.description", "t.name")},
                personal_data_erased_at = {at}{updated}
            FROM target t WHERE c.case_id = t.case_id
            RETURNING c.case_id
        ), timeline AS (
            UPDATE intake.case_events e
            SET payload = {masked_fields("e.payload", TIMELINE_TEXTS, "t.name")}
            FROM target t WHERE e.case_id = t.case_id
            RETURNING 1
        )
        SELECT case_id FROM erased"""


def purges(settings: RetentionSettings) -> list[Purge]:
    return [
        Purge(
            "personal data",
            settings.personal_data_kept,
            erasing(
                """SELECT case_id FROM intake.cases
                   WHERE status = 'closed' AND personal_data_erased_at IS NULL
                     AND updated_at < $1
                   LIMIT $2 FOR UPDATE SKIP LOCKED""",
                "now()",
            ),
        ),
        Purge(
            "idempotency keys",
            settings.idempotency_kept,
            """DELETE FROM intake.idempotency_keys WHERE (key_owner, idem_key) IN (
                   SELECT key_owner, idem_key FROM intake.idempotency_keys
                   WHERE created_at < $1
                   LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1""",
        ),
    ]
