"""The notifier's settings (`GRIDDISPATCH_NOTIFIER__…`), and where its schema's migrations are.
Light to import: the command line reads them too."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.notifier import webhooks
from shared.db import MigrationSource

if TYPE_CHECKING:
    from services.notifier.channels import Channel

MIGRATIONS = (MigrationSource("notifier", Path(__file__).parent / "migrations"),)


class NotifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDDISPATCH_NOTIFIER__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8083
    admin_token: str = Field(default="", description="bearer token for the subscriptions API")
    webhook_allow: str = Field(
        default="", description="hosts or addresses exempt from the forgery guard, comma-separated"
    )
    retry_schedule_s: str = Field(
        default=",".join(str(int(s)) for s in webhooks.RETRY_SCHEDULE_S),
        description="seconds before each retry, comma-separated",
    )
    webhook_timeout_s: float = 15.0
    delivery_lease_s: float = Field(
        default=60.0,
        description="how long a sender holds a delivery it took; if it dies before recording "
        "the attempt, the delivery is sent again (with the same id) once this has passed. "
        "Longer than webhook_timeout_s",
    )
    per_endpoint_concurrency: int = 4
    quiet_hours: str = Field(default="22:00-07:00", description="residents' quiet hours, local")
    ladder_locale: Literal["zh-CN", "en"] = Field(
        default="zh-CN",
        description="the language of messages to the escalation ladder's contacts, for each one "
        "seen for the first time (its subscription keeps it)",
    )
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_from: str = "GridDispatch <noreply@griddispatch.local>"
    sms_gateway_url: str = Field(default="", description="HTTP SMS gateway; empty = no SMS")
    sms_gateway_token: str = ""
    stream_recheck_s: float = Field(
        default=60.0, description="how often an open stream checks its token is not revoked"
    )

    @model_validator(mode="after")
    def _lease_outlives_an_attempt(self) -> Self:
        if self.delivery_lease_s <= self.webhook_timeout_s:
            raise ValueError(
                "delivery_lease_s must be longer than webhook_timeout_s: a delivery still "
                "waiting for its endpoint would be taken and sent a second time"
            )
        return self

    def quiet(self) -> tuple[time, time]:
        start, end = self.quiet_hours.split("-")
        return time.fromisoformat(start.strip()), time.fromisoformat(end.strip())

    def channels(self) -> dict[str, Channel]:
        from services.notifier.channels import EmailChannel, SmsGatewayChannel

        found: dict[str, Channel] = {
            "email": EmailChannel(self.smtp_host, self.smtp_port, self.smtp_from)
        }
        if self.sms_gateway_url:
            found["sms"] = SmsGatewayChannel(self.sms_gateway_url, self.sms_gateway_token)
        return found

    def allow(self) -> frozenset[str]:
        return frozenset(h.strip() for h in self.webhook_allow.split(",") if h.strip())

    def schedule(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.retry_schedule_s.split(",") if s.strip())
