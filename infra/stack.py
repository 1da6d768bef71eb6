"""The local stack: real Kafka (KRaft), Redis and S3Proxy servers on 127.0.0.1.

Everything lives under ``CTX_STACK__HOME`` (:class:`StackSettings`; default ``.stack/``, git-ignored)::

    jars/kafka-<ver>/, jars/s3proxy-<ver>/   resolved once from Maven Central
    conf/                                     generated config (secrets: mode 0600)
    data/kafka, data/redis, data/s3           server data, survives restarts
    logs/<service>.log                        server output
    run/<service>.pid                         "<pid> <start-time> <pgid>" of our servers

Servers are detached (own session, parent is init) so ``python -m ctxpipe.infra up`` can exit.
A pidfile names a server only while that pid still has the recorded start time, so a
reused pid is never mistaken for ours (and never signalled).

Kafka version choice (checked 2026-11 with aiokafka 0.14.0, Java 17):
3.9.2 is the default: the 3.x line faust-streaming's CI covers (3.8.1) and that still
accepts the old protocol versions older clients send. 4.1.2 from the same Maven jars
(``CTX_STACK__KAFKA_VERSION=4.1.2``, log4j2 logging) also passed an aiokafka probe:
create_topics, idempotent gzip produce, group consume + commit, transactional produce,
delete_topics (1.6 s). Either works; 3.9.x is the lower-risk choice for faust.

S3Proxy 4.1.0 (the ``jar-with-dependencies`` artifact) is the default: 2.6.0 answers
boto3 >= 1.36 PutObject with NotImplemented (it rejects the x-amz-checksum-crc32 header),
and 4.1.0's plain transitive dependencies resolve a mixed Jackson 2/3 classpath that
fails at startup.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ctxpipe.core.settings import Settings
from ctxpipe.infra import packages
from ctxpipe.infra.settings import StackSettings
from ctxpipe.infra.exceptions import (
    DownloadError,
    JavaNotFoundError,
    MavenNotFoundError,
    PortInUseError,
    RedisServerNotFoundError,
    ServiceExitedError,
    StackConfigError,
    StackError,
    StartupTimeoutError,
    StopError,
)

SERVICES: tuple[str, ...] = ("redis", "kafka", "s3")  # start order; stop is the reverse
INFRA_DIR = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
_LOCAL_HOSTS = {"127.0.0.1", "localhost"}
_POLL_S = 0.25
_KILL_GRACE_S = 10.0
_MIN_JAVA = 17  # S3Proxy 4.x and Kafka 4.x need 17; Kafka 3.9 would run on 11


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # running | stopped | unhealthy | port-taken
    pid: int | None
    address: str
    detail: str = ""

    def line(self) -> str:
        pid = f"pid {self.pid}" if self.pid is not None else "-"
        extra = f"  {self.detail}" if self.detail else ""
        return f"{self.name:<6} {self.state:<10} {pid:<10} {self.address}{extra}"


@dataclass(frozen=True)
class _PidRecord:
    pid: int
    start_time: int
    pgid: int  # the server's own process group: swept after it exits (no orphans)


# --------------------------------------------------------------------------- processes


def _proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        _reap(pid)
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    # Only a server spawned directly by this process could be our zombie; init reaps the rest.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _alive(rec: _PidRecord) -> bool:
    return _proc_start_time(rec.pid) == rec.start_time


def _spawn(cmd: list[str], log: Path, cwd: Path, env: dict[str, str]) -> _PidRecord:
    """Start ``cmd`` detached: a throwaway sh backgrounds it and exits, so the server is
    re-parented to init, outlives us, and is never a zombie or ResourceWarning here."""
    script = f'"$@" </dev/null >>{shlex.quote(str(log))} 2>&1 & echo $!'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,  # no controlling tty: Ctrl-C in the shell leaves it alone
        check=True,
    )
    pid = int(out.stdout.strip())
    start = _proc_start_time(pid)
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        pgid = -1
    return _PidRecord(pid, start if start is not None else -1, pgid)


def _signal(rec: _PidRecord, sig: signal.Signals) -> None:
    if not _alive(rec):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, sig)


def _sweep_group(rec: _PidRecord) -> None:
    """SIGKILL what is left in the server's process group once the server is gone.

    The group was made for the server alone (start_new_session) and Linux never hands out
    a pgid while the group has members, so this cannot hit a stranger."""
    if rec.pgid <= 1 or rec.pgid == os.getpgrp():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(rec.pgid, signal.SIGKILL)


def _wait_exit(rec: _PidRecord, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(rec):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _port_free(host: str, port: int) -> bool:
    # SO_REUSEADDR ignores TIME_WAIT leftovers of a server we just stopped, but still
    # fails on a socket someone is listening on or holds bound.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def _last_error_line(log: Path, secrets: Iterable[str] = ()) -> str:
    """The last ERROR/Exception line of a log, shortened, with secrets masked."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-200:]
    except FileNotFoundError:
        return ""
    pattern = re.compile(r"ERROR|FATAL|Exception|Error:|# ")
    hit = next((ln for ln in reversed(lines) if pattern.search(ln)), "")
    for secret in secrets:
        if secret:
            hit = hit.replace(secret, "***")
    return hit.strip()[:240]


def _props_escape(value: str) -> str:
    """Escape a value for a java.util.Properties file."""
    out = []
    for ch in value:
        if ch in "\\:=#!":
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) > 0x7E:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    escaped = "".join(out)
    return "\\" + escaped if escaped.startswith(" ") else escaped


def _write(path: Path, text: str, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        # Create with 0600 before any secret is written.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    else:
        path.write_text(text)


# --------------------------------------------------------------------------- services


class _Service(ABC):
    name: str
    setting: str  # env var that moves this service's port

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.settings = stack.settings

    @property
    def log(self) -> Path:
        return self.stack.logs_dir / f"{self.name}.log"

    @property
    def pidfile(self) -> Path:
        return self.stack.run_dir / f"{self.name}.pid"

    @property
    def host(self) -> str:
        return LOOPBACK

    @abstractmethod
    def ports(self) -> list[int]: ...

    @abstractmethod
    def check_tools(self) -> None:
        """Raise a ToolNotFoundError before anything is started."""

    @abstractmethod
    def prepare(self) -> None:
        """Download jars, write config, format storage."""

    @abstractmethod
    def command(self) -> list[str]: ...

    @abstractmethod
    def healthy(self) -> bool: ...

    @property
    def nice(self) -> int:
        """Nice level the server starts at (inherited by all its threads)."""
        return 0

    def secrets(self) -> list[str]:
        return []

    def env(self) -> dict[str, str]:
        # Servers get their settings from config files; CTX_* may hold secrets.
        return {k: v for k, v in os.environ.items() if not k.startswith("CTX_")}

    def address(self) -> str:
        return f"{self.host}:{self.ports()[0]}"

    def check_host(self, host: str | None) -> None:
        if host not in _LOCAL_HOSTS:
            raise StackConfigError(
                f"{self.name} is configured for host {host!r}, but the local stack serves "
                f"{LOOPBACK} only; fix {self.setting} or leave {self.name} out (--only)"
            )


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError()
    return java


def _check_java_version(java: str) -> None:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr)
    if match is None:
        raise JavaNotFoundError(f"`{java} -version` printed no version; ")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < _MIN_JAVA:
        raise JavaNotFoundError(f"{java} is Java {major}, too old; ")


class _JavaService(_Service):
    artifact: str
    pom_dir: str
    version_setting: str

    @property
    def nice(self) -> int:
        # Kafka and S3Proxy are the background of a request (the window log and archive).
        return self.stack.options.background_nice

    @property
    @abstractmethod
    def version(self) -> str: ...

    @property
    def jar_dir(self) -> Path:
        return self.stack.options.jars / f"{self.pom_dir}-{self.version}"

    def jars_ready(self) -> bool:
        return (self.jar_dir / ".complete").exists()

    def check_tools(self) -> None:
        self.stack.check_java()
        if not self.jars_ready() and shutil.which("mvn") is None:
            raise MavenNotFoundError()

    def maven_args(self) -> list[str]:
        return []

    def download(self) -> None:
        """Resolve the jars with Maven into a temp dir, then rename: never half a cache."""
        if self.jars_ready():
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise MavenNotFoundError()
        self.stack.notify(f"downloading {self.artifact}:{self.version} from Maven Central (once)")
        tmp = self.jar_dir.with_name(f".{self.jar_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        mvn_log = self.stack.logs_dir / f"mvn-{self.name}.log"
        with mvn_log.open("w") as log:
            code = subprocess.run(
                [mvn, "-B", "-q", "-f", str(INFRA_DIR / self.pom_dir / "pom.xml"),
                 *self.maven_args(), "dependency:copy-dependencies",
                 "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"],
                cwd=self.stack.home, stdout=log, stderr=subprocess.STDOUT, timeout=900,
            ).returncode
        if code != 0 or not any(tmp.glob("*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            raise DownloadError(f"{self.artifact}:{self.version}", code, mvn_log, self.version_setting)
        (tmp / ".complete").write_text(self.version + "\n")
        shutil.rmtree(self.jar_dir, ignore_errors=True)
        tmp.rename(self.jar_dir)

    def classpath(self) -> str:
        return str(self.jar_dir / "*")


class _Kafka(_JavaService):
    name = "kafka"
    setting = "CTX_KAFKA__BOOTSTRAP_SERVERS / CTX_KAFKA__CONTROLLER_PORT"
    artifact = "org.apache.kafka:kafka_2.13"
    pom_dir = "kafka"
    version_setting = "CTX_STACK__KAFKA_VERSION"

    @property
    def version(self) -> str:
        return self.stack.options.kafka_version

    @property
    def log4j2(self) -> bool:
        return int(self.version.split(".")[0]) >= 4

    @property
    def data_dir(self) -> Path:
        return self.stack.data_dir / "kafka"

    @property
    def conf(self) -> Path:
        return self.stack.conf_dir / "kafka" / "server.properties"

    def ports(self) -> list[int]:
        return [self.settings.kafka.port, self.settings.kafka.controller_port]

    def check_tools(self) -> None:
        first = self.settings.kafka.bootstrap_servers.split(",")[0]
        self.check_host(first.rsplit(":", 1)[0])
        super().check_tools()

    def maven_args(self) -> list[str]:
        return [f"-Dkafka.version={self.version}", *(["-Dkafka.log4j2"] if self.log4j2 else [])]

    def prepare(self) -> None:
        self.download()
        self.write_config()
        self.format_storage()

    def write_config(self) -> None:
        k = self.settings.kafka
        broker, controller = self.ports()
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{controller}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{broker},CONTROLLER://{LOOPBACK}:{controller}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{broker}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(k.partitions),
            "offsets.topic.replication.factor": "1",
            # Fewer internal partitions: the first consumer group / transaction is much
            # faster on two cores than with the default 50.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        _write(self.conf, "".join(f"{key}={_props_escape(v)}\n" for key, v in props.items()))
        if self.log4j2:
            _write(self.conf.with_name("log4j2.properties"), _LOG4J2)
        else:
            _write(self.conf.with_name("log4j.properties"), _LOG4J1)

    def format_storage(self) -> None:
        """Format KRaft storage once, with the same jars we run."""
        marker = self.data_dir / ".ctxpipe-kafka-version"
        if (self.data_dir / "meta.properties").exists():
            formatted = marker.read_text().strip() if marker.exists() else "?"
            if formatted.split(".")[0] != self.version.split(".")[0]:
                raise StackConfigError(
                    f"{self.data_dir} was formatted by Kafka {formatted}, not {self.version}; "
                    f"set CTX_STACK__KAFKA_VERSION={formatted} or delete that folder"
                )
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fmt_log = self.stack.logs_dir / "kafka-format.log"
        with fmt_log.open("w") as log:
            code = subprocess.run(
                [*self.java_cmd("StorageTool"), "format", "--ignore-formatted",
                 "-t", _kafka_uuid(), "-c", str(self.conf)],
                cwd=self.stack.home, stdout=log, stderr=subprocess.STDOUT, timeout=120,
            ).returncode
        if code != 0:
            raise ServiceExitedError("kafka storage format", fmt_log, _last_error_line(fmt_log))
        marker.write_text(self.version + "\n")

    def java_cmd(self, tool: str | None = None) -> list[str]:
        if self.log4j2:
            log_opt = f"-Dlog4j2.configurationFile={self.conf.with_name('log4j2.properties')}"
        else:
            log_opt = f"-Dlog4j.configuration=file:{self.conf.with_name('log4j.properties')}"
        heap = self.stack.options.kafka_heap
        jvm = [self.stack.check_java(), log_opt, "-Djava.awt.headless=true", "-cp", self.classpath()]
        if tool is not None:
            return [*jvm, "-Xmx256m", f"kafka.tools.{tool}"]
        # The heap is sized at start (-Xms = -Xmx): grown from 128 MB, G1 ran concurrent
        # marking cycles under the window log's 512 kB produce batches and the broker's CPU
        # per served window swung widely (docs/performance.md).
        return [*jvm, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError", "kafka.Kafka"]

    def command(self) -> list[str]:
        return [*self.java_cmd(), str(self.conf)]

    def healthy(self) -> bool:
        return _kafka_has_broker(LOOPBACK, self.ports()[0], timeout_s=2.0)


def _kafka_uuid() -> str:
    """A cluster id as StorageTool random-uuid makes it, without starting a JVM."""
    while True:
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not raw.startswith("-"):  # Kafka refuses ids that look like CLI options
            return raw


def _kafka_has_broker(host: str, port: int, timeout_s: float) -> bool:
    """Metadata v4 request: healthy once the broker answers and lists itself (unfenced).

    v4 is non-flexible and served by both 3.x and 4.x (KIP-896 removed only v0-v3)."""
    client_id = b"ctxpipe-stack"
    body = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id + struct.pack(">i?", -1, False)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            data = _recv_exact(sock, size)
        correlation, _throttle, brokers = struct.unpack_from(">iii", data, 0)
    except (OSError, struct.error):
        return False
    return bool(correlation == 7 and brokers > 0)


class _Redis(_Service):
    name = "redis"
    setting = "CTX_REDIS__URL"

    @property
    def data_dir(self) -> Path:
        return self.stack.data_dir / "redis"

    @property
    def conf(self) -> Path:
        return self.stack.conf_dir / "redis.conf"

    def ports(self) -> list[int]:
        return [self.settings.redis.port]

    def password(self) -> str:
        pw = self.settings.redis.password
        return pw.get_secret_value() if pw is not None else ""

    def secrets(self) -> list[str]:
        return [self.password()]

    def check_tools(self) -> None:
        self.check_host(urlsplit(self.settings.redis.url).hostname)
        # A fresh Debian machine has no redis-server: install it from Debian's packages.
        packages.ensure("redis-server", "redis-server", notify=self.stack.notify,
                        log=self.stack.logs_dir / "apt-redis-server.log")

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"bind {LOOPBACK}",
            f"port {self.ports()[0]}",
            # Loopback-only, so protected mode adds nothing but refusals without a password.
            "protected-mode no",
            "daemonize no",
            f'dir "{self.data_dir}"',
            'logfile ""',
            "appendonly yes",
            "appendfsync everysec",
            "save 3600 1 300 100 60 10000",
        ]
        if self.password():
            lines.append(f'requirepass "{_redis_quote(self.password())}"')
        _write(self.conf, "\n".join(lines) + "\n", private=True)

    def command(self) -> list[str]:
        redis = shutil.which("redis-server")
        if redis is None:
            raise RedisServerNotFoundError()
        return [redis, str(self.conf)]

    def healthy(self) -> bool:
        return _redis_ping(LOOPBACK, self.ports()[0], self.password(), timeout_s=2.0)


def _redis_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _resp(*parts: str) -> bytes:
    out = f"*{len(parts)}\r\n"
    for p in parts:
        out += f"${len(p.encode())}\r\n{p}\r\n"
    return out.encode()


def _redis_ping(host: str, port: int, password: str, timeout_s: float) -> bool:
    """PING over raw RESP; a server still loading its AOF answers -LOADING (unhealthy)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            if password:
                sock.sendall(_resp("AUTH", password))
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(_resp("PING"))
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class _S3Proxy(_JavaService):
    name = "s3"
    setting = "CTX_S3__ENDPOINT_URL"
    artifact = "org.gaul:s3proxy"
    pom_dir = "s3proxy"
    version_setting = "CTX_STACK__S3PROXY_VERSION"

    @property
    def version(self) -> str:
        return self.stack.options.s3proxy_version

    @property
    def data_dir(self) -> Path:
        return self.stack.data_dir / "s3"

    @property
    def conf(self) -> Path:
        return self.stack.conf_dir / "s3proxy.properties"

    def ports(self) -> list[int]:
        return [self.settings.s3.port]

    def secrets(self) -> list[str]:
        s3 = self.settings.s3
        return [s3.access_key_id.get_secret_value(), s3.secret_access_key.get_secret_value()]

    def check_tools(self) -> None:
        self.check_host(urlsplit(self.settings.s3.endpoint_url).hostname)
        super().check_tools()

    def maven_args(self) -> list[str]:
        return [f"-Ds3proxy.version={self.version}"]

    def prepare(self) -> None:
        self.download()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identity, credential = self.secrets()
        props = {
            "s3proxy.endpoint": f"http://{LOOPBACK}:{self.ports()[0]}",
            "s3proxy.authorization": "aws-v2-or-v4",
            "s3proxy.identity": identity,
            "s3proxy.credential": credential,
            # filesystem-nio2: the maintained disk backend (plain "filesystem" is deprecated).
            "jclouds.provider": "filesystem-nio2",
            "jclouds.filesystem.basedir": str(self.data_dir),
        }
        text = "".join(f"{key}={_props_escape(v)}\n" for key, v in props.items())
        _write(self.conf, text, private=True)

    def env(self) -> dict[str, str]:
        return {**super().env(), "LOG_LEVEL": "info"}

    def command(self) -> list[str]:
        return [self.stack.check_java(), f"-Xmx{self.stack.options.s3proxy_heap}",
                "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                "-cp", self.classpath(), "org.gaul.s3proxy.Main", "--properties", str(self.conf)]

    def healthy(self) -> bool:
        return _s3_list_buckets(self.stack.settings, timeout_s=2.0)


def _s3_list_buckets(settings: Settings, timeout_s: float) -> bool:
    # Imported here: boto3 is slow to import and the CLI often does not need it.
    from botocore.exceptions import BotoCoreError, ClientError

    from ctxpipe.storage.cold import s3_client

    client = s3_client(settings.s3, max_attempts=1, connect_timeout_s=timeout_s, read_timeout_s=timeout_s)
    try:
        client.list_buckets()
    except (BotoCoreError, ClientError):
        return False
    finally:
        client.close()
    return True


_LOG4J1 = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
"""

_LOG4J2 = """\
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.request.name=kafka.request.logger
logger.request.level=WARN
logger.state.name=state.change.logger
logger.state.level=WARN
"""


# --------------------------------------------------------------------------- the stack


class Stack:
    """Start, stop and inspect the local servers. Safe to call from several processes:
    ``up``/``down``/``start``/``stop`` hold a file lock under ``run/``."""

    def __init__(self, settings: Settings, notify: Callable[[str], None] | None = None, *,
                 options: StackSettings | None = None) -> None:
        self.settings = settings
        # The stack's own knobs, from CTX_STACK__* unless given.
        self.options = options if options is not None else StackSettings()
        self.home = self.options.home
        # Long one-time steps (a package install, a jar download) are announced through this.
        self.notify: Callable[[str], None] = notify or (lambda _: None)
        self._java: str | None = None
        self._services: dict[str, _Service] = {
            "redis": _Redis(self),
            "kafka": _Kafka(self),
            "s3": _S3Proxy(self),
        }

    # paths
    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    def log_path(self, name: str) -> Path:
        return self._service(name).log

    # public API
    def up(self, only: Iterable[str] | None = None) -> set[str]:
        """Start the services not running yet; return the names this call started."""
        names = self._names(only)
        with self._lock():
            todo = [n for n in names if self._running(n) is None]
            for name in todo:  # fail before starting anything
                self._preflight(self._service(name))
            started: set[str] = set()
            for name in names:
                if self._start(name):
                    started.add(name)
            return started

    def down(self, only: Iterable[str] | None = None) -> set[str]:
        """Stop the services we started (by pidfile); return the names that were stopped."""
        stopped: set[str] = set()
        with self._lock():
            for name in reversed(self._names(only)):
                if self._stop(name):
                    stopped.add(name)
        return stopped

    def start(self, name: str) -> bool:
        """Start one service; False when it was already running (reused)."""
        with self._lock():
            if self._running(name) is None:
                self._preflight(self._service(name))
            return self._start(name)

    def stop(self, name: str) -> bool:
        with self._lock():
            return self._stop(name)

    def restart(self, name: str) -> None:
        with self._lock():
            self._stop(name)
            self._preflight(self._service(name))
            self._start(name)

    def pid(self, name: str) -> int | None:
        rec = self._running(name)
        return rec.pid if rec is not None else None

    def pids(self) -> dict[str, int]:
        return {n: p for n in SERVICES if (p := self.pid(n)) is not None}

    def status(self) -> list[ServiceStatus]:
        return [self._status(n) for n in SERVICES]

    def check_java(self) -> str:
        if self._java is None:
            java = _java()
            _check_java_version(java)
            self._java = java
        return self._java

    # internals
    def _names(self, only: Iterable[str] | None) -> list[str]:
        wanted = set(SERVICES if only is None else only)
        unknown = wanted - set(SERVICES)
        if unknown:
            raise StackConfigError(
                f"unknown service(s) {', '.join(sorted(unknown))}; choose from {', '.join(SERVICES)}"
            )
        return [n for n in SERVICES if n in wanted]

    def _service(self, name: str) -> _Service:
        self._names([name])
        return self._services[name]

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        for d in (self.run_dir, self.logs_dir, self.data_dir, self.conf_dir):
            d.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "stack.lock").open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read_pid(self, svc: _Service) -> _PidRecord | None:
        try:
            fields = [int(f) for f in svc.pidfile.read_text().split()]
        except (FileNotFoundError, ValueError):
            return None
        if len(fields) not in (2, 3):
            return None
        return _PidRecord(fields[0], fields[1], fields[2] if len(fields) == 3 else -1)

    def _running(self, name: str) -> _PidRecord | None:
        """The live server named by the pidfile; a stale pidfile is removed."""
        svc = self._service(name)
        rec = self._read_pid(svc)
        if rec is None:
            return None
        if _alive(rec):
            return rec
        svc.pidfile.unlink(missing_ok=True)
        return None

    def _preflight(self, svc: _Service) -> None:
        svc.check_tools()
        for port in svc.ports():
            if not _port_free(svc.host, port):
                raise PortInUseError(svc.name, svc.host, port, svc.setting)

    def _start(self, name: str) -> bool:
        svc = self._service(name)
        rec = self._running(name)
        if rec is not None:
            self._wait_healthy(svc, rec)
            return False
        svc.prepare()
        with svc.log.open("a") as log:
            log.write(f"\n=== ctxpipe stack: starting {name} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        command = svc.command()
        if svc.nice:
            command = ["nice", "-n", str(svc.nice), *command]
        rec = _spawn(command, svc.log, self.home, svc.env())
        svc.pidfile.write_text(f"{rec.pid} {rec.start_time} {rec.pgid}\n")
        try:
            self._wait_healthy(svc, rec)
        except StackError:
            self._terminate(svc, rec)
            raise
        return True

    def _wait_healthy(self, svc: _Service, rec: _PidRecord) -> None:
        timeout = self.options.start_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            if not _alive(rec):
                _sweep_group(rec)
                svc.pidfile.unlink(missing_ok=True)
                raise ServiceExitedError(svc.name, svc.log, _last_error_line(svc.log, svc.secrets()))
            if svc.healthy():
                return
            if time.monotonic() >= deadline:
                raise StartupTimeoutError(svc.name, timeout, svc.log)
            time.sleep(_POLL_S)

    def _stop(self, name: str) -> bool:
        svc = self._service(name)
        rec = self._running(name)
        if rec is None:
            return False
        self._terminate(svc, rec)
        return True

    def _terminate(self, svc: _Service, rec: _PidRecord) -> None:
        """SIGTERM (Kafka shuts down cleanly, Redis flushes its AOF), SIGKILL on timeout."""
        _signal(rec, signal.SIGTERM)
        if not _wait_exit(rec, self.options.stop_timeout_s):
            _signal(rec, signal.SIGKILL)
            if not _wait_exit(rec, _KILL_GRACE_S):
                raise StopError(svc.name, rec.pid)
        _sweep_group(rec)
        svc.pidfile.unlink(missing_ok=True)

    def _status(self, name: str) -> ServiceStatus:
        svc = self._service(name)
        address = svc.address()
        rec = self._running(name)
        if rec is None:
            busy = [p for p in svc.ports() if not _port_free(svc.host, p)]
            if busy:
                return ServiceStatus(name, "port-taken", None, address,
                                     f"port {busy[0]} held by a process we did not start")
            return ServiceStatus(name, "stopped", None, address)
        state = "running" if svc.healthy() else "unhealthy"
        detail = ""
        if isinstance(svc, _JavaService):
            detail = f"{svc.artifact.split(':')[1]} {svc.version}"
        return ServiceStatus(name, state, rec.pid, address, detail)
