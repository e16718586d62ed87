"""Settings of every service, read from the environment with the `GRIDDISPATCH_` prefix.

Every setting has a default that works on a developer's machine with `make up`.
Nested values use a double underscore: `GRIDDISPATCH_KAFKA__BOOTSTRAP_SERVERS=...`.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:19092"
    partitions: int = Field(default=12, ge=1, description="partitions of each contract topic")
    replication_factor: int = Field(
        default=1,
        ge=1,
        description="replicas of the topics GridDispatch creates itself (department feeds; "
        "locally the contract topics too): the cluster's default.replication.factor, so that "
        "acks=all writes meet its min.insync.replicas",
    )
    client_id_prefix: str = "griddispatch"
    # Authentication: SCRAM-SHA-512 (what Strimzi's KafkaUser gives) over plain TCP or TLS.
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_cafile: Path | None = Field(default=None, description="CA bundle for SASL_SSL")
    fetch_max_wait_ms: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="how long the broker may hold a consumer's fetch when no new records are "
        "there: lower answers a partition that turns busy sooner, higher costs less idle CPU",
    )
    fetch_min_bytes: int = Field(
        default=16_384,
        ge=1,
        le=10_000_000,
        description="how much a busy consumer's fetch waits for, up to fetch_max_wait_ms: "
        "more gathers a busy topic into fewer, larger fetches and batches (less CPU for Kafka "
        "and the consumer); 1 answers every record at once. Quiet consumers use 1 (see "
        "fetch_busy_per_s)",
    )
    fetch_busy_per_s: float = Field(
        default=150,
        gt=0,
        description="records a second from which a consumer counts as busy and fetches "
        "fetch_min_bytes at a time; below half of it, it fetches each record as it comes",
    )
    linger_ms: int = Field(
        default=0,
        ge=0,
        le=1_000,
        description="how long a producer holds a record for others to join its request; 0 "
        "sends at once (aiokafka has one request in flight per broker, so records batch up "
        "behind it under load anyway)",
    )


class LocalStackSettings(BaseModel):
    """Where the local stack (`griddispatch stack …`) keeps its jars, data and logs."""

    home: Path = PROJECT_ROOT / ".local"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_heap: str = "512m"
    postgres_port: int = 15432
    prometheus_port: int = Field(
        default=19090, description="`griddispatch up`'s Prometheus; 0 = do not start one"
    )
    mailbox_smtp_port: int = Field(
        default=2525, description="`griddispatch up`'s local mailbox (SMTP); 0 = no mailbox"
    )
    mailbox_sms_port: int = Field(default=2526, description="its SMS gateway")


class OutboxSettings(BaseModel):
    batch_size: int = Field(default=2000, ge=1)
    poll_interval_s: float = Field(default=1.0, gt=0, description="fallback when no NOTIFY arrives")


class RetentionSettings(BaseModel):
    """How long records are kept. Each service prunes its own tables (`shared.retention`)."""

    personal_data_days: int = Field(
        default=180,
        ge=1,
        description="reporters' and residents' contacts, care flags and community-correction "
        "status are erased this many days after their case closed",
    )
    dedup_days: int = Field(
        default=35,
        ge=31,
        description="what recognises a message delivered again (seen events, the router's "
        "decision log, delivered webhooks): longer than any topic keeps a message (the "
        "dead-letter topics, 30 days), so a replay is still recognised",
    )
    idempotency_hours: int = Field(
        default=24, ge=1, description="how long intake answers a retried Idempotency-Key"
    )
    check_s: float = Field(default=3600.0, gt=0, description="how often each service prunes")
    batch_size: int = Field(default=1000, ge=1, description="rows per pruning statement")

    @property
    def personal_data_kept(self) -> timedelta:
        return timedelta(days=self.personal_data_days)

    @property
    def dedup_kept(self) -> timedelta:
        return timedelta(days=self.dedup_days)

    @property
    def idempotency_kept(self) -> timedelta:
        return timedelta(hours=self.idempotency_hours)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GRIDDISPATCH_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    database_url: str = "postgresql://griddispatch@127.0.0.1:15432/griddispatch"
    kafka: KafkaSettings = KafkaSettings()
    local: LocalStackSettings = LocalStackSettings()
    outbox: OutboxSettings = OutboxSettings()
    retention: RetentionSettings = RetentionSettings()
    log_level: str = "INFO"
    log_json: bool | None = Field(
        default=None, description="JSON logs; by default on when stderr is not a terminal"
    )
    http_host: str = "127.0.0.1"
    metrics_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="how often sampled metrics (consumer lag, open cases) refresh",
    )
    metrics_port: int = Field(
        default=0, description="port of /metrics and /health for non-HTTP services; 0 = off"
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
