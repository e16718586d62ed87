"""Escalation's settings (`GRIDDISPATCH_ESCALATION__…`) and its schema's migrations. Light to
import: the command line reads them too."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.escalation import timers
from services.escalation.deadlines import LadderPolicy
from shared.db import OUTBOX_MIGRATIONS, MigrationSource

MIGRATIONS = (
    OUTBOX_MIGRATIONS,
    MigrationSource("escalation", Path(__file__).parent / "migrations"),
)


class EscalationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDDISPATCH_ESCALATION__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8082
    admin_token: str = Field(default="", description="bearer token for emergency mode over HTTP")
    step_s: float | None = Field(default=None, description="between rungs; default: the window")
    repeat_every_s: float = 3600.0
    max_repeats: int = 3
    batch_size: int = 500
    max_sleep_s: float = 1.0

    def policy(self) -> timers.Settings:
        return timers.Settings(
            ladder=LadderPolicy(self.step_s, self.repeat_every_s, self.max_repeats),
        )
