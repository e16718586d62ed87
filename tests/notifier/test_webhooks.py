"""Webhook policy: signatures checked by an independent verifier (the Standard Webhooks
algorithm written out here with hmac), retries and Retry-After, the forgery guard."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from services.notifier import webhooks

SECRET_A = "whsec_" + base64.b64encode(b"a" * 32).decode()
SECRET_B = "whsec_" + base64.b64encode(b"b" * 32).decode()


def verify(secret: str, headers: dict[str, str], body: str) -> bool:
    """The spec's algorithm: base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), `v1,` prefix,
    space-separated list."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig == f"v1,{expected}" for sig in headers["webhook-signature"].split(" "))


def test_signatures_verify_independently_also_during_rotation() -> None:
    now = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    body = '{"case_id":"c-1","event_type":"CaseRouted"}'
    headers = webhooks.sign([SECRET_A, SECRET_B], "d-1", now, body)
    assert headers["webhook-id"] == "d-1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert verify(SECRET_A, headers, body)
    assert verify(SECRET_B, headers, body)  # receivers on either secret accept it
    assert not verify(SECRET_A, headers, body.replace("c-1", "c-2"))
    other = "whsec_" + base64.b64encode(b"c" * 32).decode()
    assert not verify(other, headers, body)


def test_retry_schedule_and_retry_after() -> None:
    assert [webhooks.next_delay(n, None) for n in range(9)] == [
        0,
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        36000,
        None,
    ]
    assert webhooks.next_delay(1, 120) == 120  # the receiver asks for longer: honoured
    assert webhooks.next_delay(2, 10) == 300  # shorter than the schedule: the schedule wins
    now = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    assert webhooks.retry_after_s("30", now) == 30
    assert (
        webhooks.retry_after_s(format_datetime(now + timedelta(minutes=2), usegmt=True), now) == 120
    )
    assert webhooks.retry_after_s("soon", now) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.5/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://[::1]/hook",
        "ftp://example.org/hook",
    ],
)
def test_the_forgery_guard_refuses_internal_destinations(url: str) -> None:
    with pytest.raises(webhooks.ForbiddenDestination):
        webhooks.check_destination(url)


def test_allow_listed_and_public_destinations_pass() -> None:
    webhooks.check_destination("http://127.0.0.1:9000/hook", frozenset({"127.0.0.1"}))
    webhooks.check_destination("https://8.8.8.8/hook")  # an address literal needs no DNS
