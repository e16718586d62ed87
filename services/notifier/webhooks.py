"""Webhook delivery policy (Standard Webhooks): signing, retries, and the forgery guard. Pure
apart from DNS resolution in `check_destination`.

- Signed with the `standardwebhooks` library: headers `webhook-id` (the delivery id, the same
  on every retry), `webhook-timestamp`, `webhook-signature` (`v1,<base64 HMAC-SHA256>`; one
  signature per active secret during a rotation, space-separated).
- Retries after: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; a `Retry-After` from
  the receiver wins when longer. `410 Gone` disables the endpoint.
- Destinations on loopback, private, link-local or otherwise non-global addresses are refused
  unless allow-listed (no server-side request forgery).
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from standardwebhooks import Webhook

RETRY_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


def sign(secrets: list[str], msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    signatures = [Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
    }


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return None


def next_delay(
    attempts_made: int, retry_after: float | None, schedule: tuple[float, ...] = RETRY_SCHEDULE_S
) -> float | None:
    """Seconds until the next attempt after `attempts_made` attempts, or None: give up."""
    if attempts_made >= len(schedule):
        return None
    delay = schedule[attempts_made]
    return max(delay, retry_after) if retry_after is not None else delay


class ForbiddenDestination(ValueError):
    pass


def check_destination(url: str, allow: frozenset[str] = frozenset()) -> None:
    """Raise `ForbiddenDestination` unless every address `url`'s host resolves to is global
    (or the host, or an address, is allow-listed)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise ForbiddenDestination(f"{url}: only http(s) endpoints")
    host = parts.hostname or ""
    if not host:
        raise ForbiddenDestination(f"{url}: no host")
    if host in allow:
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise ForbiddenDestination(f"{url}: cannot resolve {host}") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if str(addr) in allow:
            continue
        if not addr.is_global or addr.is_multicast:
            raise ForbiddenDestination(f"{url}: {host} resolves to a non-public address {addr}")
