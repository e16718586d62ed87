"""Subscriptions — who is told, and how — and the feed switches: validated input and the
statements that keep them (used by the HTTP API and the command line)."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from services.notifier import webhooks
from services.notifier.views import DEPARTMENT_EVENTS
from shared import topics

# What a subscription may choose from: the events of a department's feed
FEED_EVENT_TYPES = tuple(e.EVENT_TYPE for e in DEPARTMENT_EVENTS)


class SubscriptionIn(BaseModel):
    """Who is told, and how: a department or a grid worker, by webhook (`url`, `secrets`),
    a department by e-mail or a grid worker by SMS (`address`, `locale`)."""

    owner_kind: Literal["department", "worker"]
    owner: str = Field(
        min_length=1,
        max_length=64,
        description="department code, worker id, or '*' for a worker-app gateway (every worker)",
    )
    channel: Literal["webhook", "email", "sms"] = "webhook"
    url: str | None = Field(default=None, min_length=8, max_length=2000)
    secrets: list[str] | None = Field(
        default=None, min_length=1, max_length=3, description="whsec_…; several during a rotation"
    )
    address: str | None = Field(
        default=None, max_length=254, description="e-mail address or phone number"
    )
    locale: Literal["zh-CN", "en"] = Field(default="zh-CN", description="the messages' language")
    event_types: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=len(FEED_EVENT_TYPES),
        description="only these lifecycle events (null: every one the channel carries), of "
        + ", ".join(FEED_EVENT_TYPES),
    )

    @field_validator("event_types")
    @classmethod
    def _known_event_types(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = [t for t in value if t not in FEED_EVENT_TYPES]
        if unknown:
            raise ValueError(
                f"not a department's event: {', '.join(unknown)} "
                f"(one of {', '.join(FEED_EVENT_TYPES)})"
            )
        return sorted(set(value))

    @model_validator(mode="after")
    def _one_target(self) -> SubscriptionIn:
        if self.channel == "webhook":
            if self.url is None or not self.secrets or self.address is not None:
                raise ValueError("a webhook takes `url` and `secrets`, not `address`")
            return self
        if self.url is not None or self.secrets is not None or self.address is None:
            raise ValueError(f"{self.channel} takes `address`, not `url` or `secrets`")
        if self.channel == "email":
            if self.owner_kind != "department":
                raise ValueError("e-mail subscriptions are for departments (workers get SMS)")
            try:
                checked = validate_email(self.address, check_deliverability=False)
            except EmailNotValidError as exc:
                raise ValueError(f"address: {exc}") from exc
            self.address = checked.normalized
        else:
            if self.owner_kind != "worker" or self.owner == "*":
                raise ValueError("SMS subscriptions are for one grid worker each")
            if not PHONE.fullmatch(self.address):
                raise ValueError("address: a phone number of 6 to 15 digits, + allowed first")
        return self


PHONE = re.compile(r"\+?[0-9]{6,15}")


class FeedSwitch(BaseModel):
    enabled: bool


def check_webhook(body: SubscriptionIn, allow: frozenset[str]) -> None:
    """A webhook's destination (no loopback or private addresses unless allowed) and its
    secrets (a malformed one fails here, before it is stored)."""
    if body.channel == "webhook":
        webhooks.check_destination(body.url or "", allow)
        webhooks.sign(body.secrets or [], "check", datetime.now(UTC), "")


_INSERT_SQL = (
    "INSERT INTO notifier.subscriptions (owner_kind, owner, channel, url, secrets, address,"
    " locale, event_types) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)


def _row(body: SubscriptionIn) -> tuple[Any, ...]:
    return (
        body.owner_kind,
        body.owner,
        body.channel,
        body.url,
        body.secrets,
        body.address,
        body.locale,
        body.event_types,
    )


async def add_subscription(
    conn: asyncpg.Connection, body: SubscriptionIn, allow: frozenset[str]
) -> int:
    check_webhook(body, allow)
    sub_id: int = await conn.fetchval(_INSERT_SQL + " RETURNING id", *_row(body))
    return sub_id


CSV_COLUMNS = (
    "owner_kind",
    "owner",
    "channel",
    "address",
    "locale",
    "url",
    "secrets",
    "event_types",
)


def read_csv(text: str, allow: frozenset[str]) -> tuple[list[SubscriptionIn], list[str]]:
    """The subscriptions of a CSV file (a header naming some of `CSV_COLUMNS`; several
    secrets, and event types, separated by spaces), each checked as `POST /v1/subscriptions`
    checks it, and what is wrong, by line and field. Pure."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    unknown = [c for c in header if c not in CSV_COLUMNS]
    missing = [c for c in ("owner_kind", "owner", "channel") if c not in header]
    if unknown or missing:
        return [], [
            f"line 1: the header must name {', '.join(CSV_COLUMNS)} (owner_kind, owner and "
            f"channel at least); unknown: {', '.join(unknown) or '-'}; "
            f"missing: {', '.join(missing) or '-'}"
        ]
    subs: list[SubscriptionIn] = []
    errors: list[str] = []
    for line, row in enumerate(reader, start=2):
        values: dict[str, Any] = {k: v.strip() for k, v in row.items() if k and v and v.strip()}
        for listed in ("secrets", "event_types"):
            if listed in values:
                values[listed] = values[listed].split()
        try:
            body = SubscriptionIn.model_validate(values)
            check_webhook(body, allow)
        except ValidationError as exc:
            errors += [
                f"line {line}: {'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}"
                for e in exc.errors()
            ]
            continue
        except ValueError as exc:  # a forbidden destination, a malformed secret
            errors.append(f"line {line}: url or secrets: {exc}")
            continue
        subs.append(body)
    return subs, errors


async def import_subscriptions(
    conn: asyncpg.Connection, subs: list[SubscriptionIn]
) -> tuple[int, int]:
    """Add the subscriptions that are not active already (the same owner, channel and address
    or URL), all in one transaction; returns (added, already there). Checked by `read_csv`."""
    async with conn.transaction():
        have = {
            (r["owner_kind"], r["owner"], r["channel"], r["target"])
            for r in await conn.fetch(
                "SELECT owner_kind, owner, channel, coalesce(address, url) AS target "
                "FROM notifier.subscriptions WHERE active"
            )
        }
        new: list[SubscriptionIn] = []
        for body in subs:
            key = (body.owner_kind, body.owner, body.channel, body.address or body.url)
            if key not in have:
                have.add(key)
                new.append(body)
        await conn.executemany(_INSERT_SQL, [_row(b) for b in new])
    return len(new), len(subs) - len(new)


def masked(address: str | None) -> str | None:
    """An address as listings show it: enough to recognise, not to use (personal data)."""
    if not address:
        return address
    if "@" in address:
        name, _, domain = address.partition("@")
        return f"{name[:1]}***@{domain}"
    return f"{address[:3]}****{address[-4:]}" if len(address) > 7 else "****"


async def list_subscriptions(
    conn: asyncpg.Connection, owner_kind: str | None = None, owner: str | None = None
) -> list[dict[str, Any]]:
    """Subscriptions without their secrets, addresses masked."""
    rows = await conn.fetch(
        "SELECT id, owner_kind, owner, channel, url, address, locale, event_types, active,"
        " disabled_reason, created_at FROM notifier.subscriptions"
        " WHERE ($1::text IS NULL OR owner_kind = $1) AND ($2::text IS NULL OR owner = $2)"
        " ORDER BY id",
        owner_kind,
        owner,
    )
    return [{**dict(r), "address": masked(r["address"])} for r in rows]


DEMO_EMAIL_DOMAIN = "example.org"


async def add_demo_subscriptions(conn: asyncpg.Connection, departments: list[str]) -> int:
    """For the demo city: an e-mail subscription (`<code>@example.org`, zh-CN) for every
    department that has no active e-mail subscription yet; returns how many were added."""
    have = {
        r["owner"]
        for r in await conn.fetch(
            "SELECT owner FROM notifier.subscriptions WHERE owner_kind = 'department' "
            "AND channel = 'email' AND active"
        )
    }
    subs = [
        SubscriptionIn(
            owner_kind="department",
            owner=code,
            channel="email",
            address=f"{code}@{DEMO_EMAIL_DOMAIN}",
        )
        for code in sorted(set(departments) - have)
    ]
    added, _ = await import_subscriptions(conn, subs)
    return added


async def disable_subscription(conn: asyncpg.Connection, sub_id: int) -> bool:
    done: str = await conn.execute(
        "UPDATE notifier.subscriptions SET active = false, disabled_reason = 'by an operator'"
        " WHERE id = $1 AND active",
        sub_id,
    )
    return done.endswith(" 1")


async def switch_feed(conn: asyncpg.Connection, department: str, enabled: bool) -> None:
    """Switch a department's feed topic on or off (the feed writer sees it within seconds)."""
    topics.department_feed(department)  # a valid topic name, or ValueError
    await conn.execute(
        "INSERT INTO notifier.department_feeds (department, enabled) VALUES ($1, $2) "
        "ON CONFLICT (department) DO UPDATE SET enabled = $2, updated_at = now()",
        department,
        enabled,
    )
