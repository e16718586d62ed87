"""The router's settings (`GRIDDISPATCH_ROUTER__…`) and its schema's migrations. Light to
import: the command line reads them too."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.db import MigrationSource

MIGRATIONS = (MigrationSource("router", Path(__file__).parent / "migrations"),)


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDDISPATCH_ROUTER__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8081
    admin_token: str = Field(
        default="", description="bearer token for explain and triage over HTTP; empty = off"
    )
    snap_m: float = 100.0
    batch_size: int = 500
    reload_poll_s: float = 2.0
    open_counts_refresh_s: float = Field(
        default=30.0,
        gt=0,
        description="how often the open-case counts that pick the least-loaded worker are read "
        "again from the cases: each replica counts its own routings as it makes them and the "
        "closings of its own lifecycle partitions, and would drift from the others' without it",
    )
