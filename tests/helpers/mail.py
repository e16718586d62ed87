"""What the tests' SMTP servers received."""

from __future__ import annotations

from email.message import Message


def body_text(msg: Message) -> str:
    """The decoded body of a single-part message (the notifier sends plain text)."""
    payload = msg.get_payload(decode=True)
    assert isinstance(payload, bytes), "expected a single-part message"
    return payload.decode()
