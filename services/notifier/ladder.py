"""Who hears of an escalation: the person or office the case climbed to (the grid leader, the
community, the street office, the district), at the contact the router resolved when it routed
the case (`CaseEscalated.to`). Pure functions.

A mobile number is texted and an e-mail address written to; anything else (a landline, the
city's 12345 hotline) cannot take a message, and the office learns of the case from its
department's feed, its dashboards and its worker as before. The grid worker at the foot of the
ladder has subscriptions of their own (`staff.queue_for_staff`).
"""

from __future__ import annotations

import re
from typing import Literal

from email_validator import EmailNotValidError, validate_email

from shared import events

# China's mobile numbers (11 digits from 13x to 19x), with or without the country code; the
# separators people write are dropped first
MOBILE = re.compile(r"(?:\+?86)?(1[3-9][0-9]{9})")
SEPARATORS = re.compile(r"[\s\-().]")

Target = tuple[Literal["sms", "email"], str]


def address_of(contact: str | None) -> Target | None:
    """The channel and address a ladder contact can be reached at, or None."""
    if not contact or not contact.strip():
        return None
    text = contact.strip()
    if "@" in text:
        try:
            return "email", validate_email(text, check_deliverability=False).normalized
        except EmailNotValidError:
            return None
    mobile = MOBILE.fullmatch(SEPARATORS.sub("", text))
    return ("sms", mobile.group(1)) if mobile else None


def recipient(event: events.CaseEscalated) -> tuple[str, Target] | None:
    """Whom an escalation tells, as (owner, channel and address): the step it reached, unless
    that is the grid worker (told through their own subscriptions) or has no address."""
    if event.to.role == "worker":
        return None
    target = address_of(event.to.contact)
    if target is None:
        return None
    return f"{event.to.role}:{event.to.name}"[:64], target
