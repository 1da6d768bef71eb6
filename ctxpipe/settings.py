"""One typed, frozen settings object, built once from the environment.

Every component reads its own group (``settings.kafka``, ``settings.redis``...), so no
constructor takes thirty loose arguments. The same variable names are used by the local
stack, the tests and production: ``CTX_<GROUP>__<FIELD>``, e.g. ``CTX_KAFKA__BOOTSTRAP_SERVERS``.
Secrets are ``SecretStr`` so they never show up in reprs or logs.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Group):
    bootstrap_servers: str = "127.0.0.1:9092"
    controller_port: int = 9093
    source_topic: str = "context.events"
    dlq_topic: str = "context.events.dlq"
    summary_topic: str = "context.summaries"
    windows_topic: str = "context.windows"
    consumer_group: str = "ctxpipe-ingest"
    partitions: int = Field(default=4, ge=1)
    # Small commit interval shrinks what a crash replays (see shared/notes).
    commit_interval_s: float = Field(default=1.0, gt=0)

    @property
    def port(self) -> int:
        return int(self.bootstrap_servers.rsplit(":", 1)[1].split(",")[0])


class RedisSettings(_Group):
    url: str = "redis://127.0.0.1:6379/0"
    password: SecretStr | None = None
    key_prefix: str = "ctx"
    hot_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    hot_max_items: int = Field(default=500, gt=0)
    # How long re-published event ids are recognised (and dropped) after a tenant's last event.
    ledger_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])


class S3Settings(_Group):
    endpoint_url: str = "http://127.0.0.1:9000"
    region: str = "us-east-1"
    access_key_id: SecretStr = SecretStr("local-identity")
    secret_access_key: SecretStr = SecretStr("local-credential")
    bucket: str = "ctxpipe-cold"
    archive_batch_events: int = Field(default=500, gt=0)
    archive_batch_seconds: float = Field(default=5.0, gt=0)

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1].split("/")[0])


class QdrantSettings(_Group):
    # "edge": Qdrant Edge in-process (one process per shard); "server": a Qdrant server
    # through qdrant-client, the scale-out path.
    mode: Literal["edge", "server"] = "edge"
    edge_path: Path = PROJECT_ROOT / ".stack" / "data" / "qdrant-edge"
    url: str = "http://127.0.0.1:6333"
    api_key: SecretStr | None = None
    collection: str = "context_chunks"


class EmbeddingSettings(_Group):
    model_name: str = "all-MiniLM-L6-v2"
    dimension: int = 384
    batch_size: int = Field(default=64, gt=0)
    device: str = "cpu"


class StackSettings(_Group):
    """Where the local stack keeps its jars, data and logs (git-ignored)."""

    home: Path = PROJECT_ROOT / ".stack"
    # Shared jar cache; None means ``home / "jars"``. Tests point throwaway stacks at the
    # main cache so they never download twice.
    jars_dir: Path | None = None
    # 3.9.x: the line faust's CI covers; 4.x also works with aiokafka (see infra/stack.py).
    kafka_version: str = "3.9.2"
    # 4.x: 2.6.0 rejects the checksum headers boto3 >= 1.36 sends (NotImplemented).
    s3proxy_version: str = "4.1.0"
    kafka_heap: str = "512m"
    s3proxy_heap: str = "256m"
    start_timeout_s: float = Field(default=90.0, gt=0)
    stop_timeout_s: float = Field(default=30.0, gt=0)

    @property
    def jars(self) -> Path:
        return self.jars_dir if self.jars_dir is not None else self.home / "jars"


class ApiSettings(_Group):
    host: str = "127.0.0.1"
    port: int = 8000
    # tenant -> API key; empty means the API runs open (local development only).
    tenant_keys: dict[str, SecretStr] = Field(default_factory=dict)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CTX_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    s3: S3Settings = S3Settings()
    qdrant: QdrantSettings = QdrantSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    stack: StackSettings = StackSettings()
    api: ApiSettings = ApiSettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()


def to_env(settings: Settings) -> dict[str, str]:
    """The environment that rebuilds ``settings`` in another process (a worker the tests
    start and kill). Holds secrets in clear: hand it to a child process, never log it."""
    env: dict[str, str] = {}
    for group_name in Settings.model_fields:
        group = getattr(settings, group_name)
        for field, value in group.model_dump(mode="json").items():
            raw = getattr(group, field)
            if isinstance(raw, SecretStr):
                value = raw.get_secret_value()
            elif isinstance(raw, dict):
                value = json.dumps(
                    {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in raw.items()}
                )
            if value is None:
                continue
            env[f"CTX_{group_name.upper()}__{field.upper()}"] = str(value)
    return env
