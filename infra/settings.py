"""The local stack's own knobs (``CTX_STACK__*``): where it keeps jars, data and logs, which
server versions it runs, their heaps and priority. They belong to this development stack,
not to the product, whose settings (:mod:`ctxpipe.core.settings`) only say where the
servers are."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ctxpipe.core.settings import PROJECT_ROOT


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CTX_STACK__", frozen=True, extra="ignore")

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
    # Kafka and S3Proxy start at this nice level (0-19): where they share the cores with the
    # service (a dev box, the benches), logging and archiving served windows yield to
    # answering requests. Redis, read on every request, keeps the normal priority.
    background_nice: int = Field(default=10, ge=0, le=19)
    start_timeout_s: float = Field(default=90.0, gt=0)
    stop_timeout_s: float = Field(default=30.0, gt=0)

    @property
    def jars(self) -> Path:
        return self.jars_dir if self.jars_dir is not None else self.home / "jars"
