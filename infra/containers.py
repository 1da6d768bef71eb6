"""The servers the tests need, from a container engine through testcontainers (the design
card's package): Kafka in KRaft mode, Redis, an S3 server and Qdrant. The test fixtures use
it instead of the local stack's processes when ``CTX_TEST_SERVERS=containers``
(tests/conftest.py); machines without an engine use the local stack (:mod:`.stack`).

Images are pinned to the versions the local stack runs where one exists."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxpipe.core.settings import Settings
from ctxpipe.infra.exceptions import StackError

KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"  # Kafka 3.9, the local stack's line
REDIS_IMAGE = "redis:7.4"
S3_IMAGE = "andrewgaul/s3proxy:4.1.0"  # S3Proxy, as the local stack runs (deploy/compose.yaml too)
QDRANT_IMAGE = "qdrant/qdrant:v1.18.3"  # the server the local tests use (shared/bin)


def engine_address() -> str | None:
    """Where a container engine answers (``DOCKER_HOST`` or the default socket), or None.
    Probed with a plain socket: the Docker client leaves its socket open when it fails."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return host  # a remote engine: the client finds out
    path = host.removeprefix("unix://")
    if not Path(path).exists():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return None
    return host


@dataclass
class ContainerServers:
    """Start the four servers once (``up``), point ``base`` at them, stop them (``down``)."""

    base: Settings
    _started: list[Any] = field(default_factory=list)
    settings: Settings | None = None
    qdrant_url: str | None = None

    def up(self) -> Settings:
        if engine_address() is None:
            raise StackError(
                "no container engine reachable for CTX_TEST_SERVERS=containers (no DOCKER_HOST and "
                "no /var/run/docker.sock); unset it to use the local stack"
            )
        try:
            from docker.errors import DockerException
            from testcontainers.community.kafka import KafkaContainer
            from testcontainers.community.qdrant import QdrantContainer
            from testcontainers.community.redis import RedisContainer
            from testcontainers.core.container import DockerContainer
            from testcontainers.core.wait_strategies import HttpWaitStrategy
        except ImportError as exc:
            raise StackError(f"CTX_TEST_SERVERS=containers needs testcontainers installed: {exc}") from None
        try:
            kafka = self._start(KafkaContainer(KAFKA_IMAGE).with_kraft())
            redis = self._start(RedisContainer(REDIS_IMAGE))
            s3 = self._start(
                DockerContainer(S3_IMAGE)
                .with_env("S3PROXY_AUTHORIZATION", "aws-v2-or-v4")
                .with_env("S3PROXY_IDENTITY", self.base.s3.access_key_id.get_secret_value())
                .with_env("S3PROXY_CREDENTIAL", self.base.s3.secret_access_key.get_secret_value())
                .with_exposed_ports(80)
                .waiting_for(HttpWaitStrategy(80).for_status_code(200))
            )
            qdrant = self._start(QdrantContainer(QDRANT_IMAGE))
        except DockerException as exc:
            self.down()
            raise StackError(
                f"no container engine reachable for CTX_TEST_SERVERS=containers ({exc}); "
                "unset it to use the local stack"
            ) from None
        redis_url = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
        self.qdrant_url = f"http://{qdrant.rest_host_address}"
        self.settings = self.base.model_copy(update={
            "kafka": self.base.kafka.model_copy(update={"bootstrap_servers": kafka.get_bootstrap_server()}),
            "redis": self.base.redis.model_copy(update={"url": redis_url}),
            "s3": self.base.s3.model_copy(update={
                "endpoint_url": f"http://{s3.get_container_host_ip()}:{s3.get_exposed_port(80)}"}),
        })
        return self.settings

    def _start(self, container: Any) -> Any:
        container.start()
        self._started.append(container)
        return container

    def down(self) -> None:
        while self._started:
            self._started.pop().stop()
