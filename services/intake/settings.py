"""Intake's own settings (environment prefix `GRIDDISPATCH_INTAKE__`) and its schema's
migrations. Light to import: the command line reads them too."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.db import OUTBOX_MIGRATIONS, MigrationSource

MIGRATIONS = (OUTBOX_MIGRATIONS, MigrationSource("intake", Path(__file__).parent / "migrations"))


class IntakeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDDISPATCH_INTAKE__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(default=1, ge=1, description="server processes")
    public_base_url: str = Field(
        default="", description="prefix of status URLs, e.g. https://311.example.gov"
    )
    rate_limit_per_key: str = "200/second"
    rate_limit_per_address: str = "100/second"
    max_body_bytes: int = 64 * 1024
    verify_window_s: float = Field(
        default=72 * 3600.0,
        ge=0,
        description="after a resolution, how long the resident has to verify or reopen the case "
        "before GridDispatch closes it for them (the resolution states when: `closes_at`); 0: "
        "resolved cases wait for a person to close them",
    )
    urge_interval_s: float = Field(
        default=24 * 3600.0,
        ge=0,
        description="how long after urging a case (催办) it may be urged again",
    )
    open311_public_read: bool = Field(
        default=True, description="Open311 GET requests without an api_key (no personal data)"
    )
    catalogue_refresh_s: float = 10.0
    key_cache_s: float = Field(default=5.0, description="a revoked key works at most this long")
    pool_size: int = 10
