"""What the router keeps, and for how long (run by `shared.retention.Retention`).

- The decision log and the lifecycle events folded into the open-case counts recognise a
  message delivered again; no topic keeps a message longer than its dead-letter topic
  (30 days), so after `dedup_days` they can go.
- A case's facts keep the care groups of its reporter (they raise the priority of a reroute)
  and the description; `personal_data_days` after the case was resolved or closed the care
  groups are erased and contacts written into the description masked.
- A resident's erasure (`PersonalDataErased`) does the same at once, and leaves a mark
  (`router.erased_cases`) that a routing recorded later obeys too. Should a routing and the
  erasure be recorded at the same moment, the next round here forgets what the routing kept.
  The marks go after `dedup_days`, when no topic can deliver the case's report any more.
"""

from __future__ import annotations

from datetime import timedelta

from shared.retention import Purge, masked_fields, seen_events_purge
from shared.settings import RetentionSettings


def forget_personal(sql_facts: str) -> str:
    """SQL for the case facts `sql_facts` (a jsonb expression) without the care groups, and
    with personal data masked in the description."""
    return masked_fields(f"({sql_facts}) - 'care_groups'", ["description"])


FORGET_PERSONAL_FACTS = forget_personal("facts")


def _forgetting(cases: str) -> str:
    """A purge statement forgetting the personal facts of the cases `cases` selects."""
    return f"""UPDATE router.cases SET facts = {FORGET_PERSONAL_FACTS}
               WHERE case_id IN ({cases})
               RETURNING 1"""


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
            _forgetting(
                """SELECT case_id FROM router.cases
                   WHERE NOT open AND facts ? 'care_groups' AND updated_at < $1
                   LIMIT $2 FOR UPDATE SKIP LOCKED"""
            ),
        ),
        Purge(  # what a routing kept while its case's erasure was being recorded
            "erased facts",
            timedelta(0),
            _forgetting(
                f"""SELECT c.case_id FROM router.cases c JOIN router.erased_cases e USING (case_id)
                   WHERE c.facts IS DISTINCT FROM {forget_personal("c.facts")}
                     AND e.erased_at < $1
                   LIMIT $2 FOR UPDATE OF c SKIP LOCKED"""
            ),
        ),
        Purge(
            "erasure marks",
            settings.dedup_kept,
            """DELETE FROM router.erased_cases WHERE case_id IN (
                   SELECT case_id FROM router.erased_cases WHERE erased_at < $1
                   LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1""",
        ),
    ]
