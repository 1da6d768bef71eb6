"""Errors of the local stack.

Every message is one line that says what is wrong and what to do; the CLI prints it as
``error: <message>`` with no traceback.
"""

from __future__ import annotations

from pathlib import Path

from ctxpipe.core.errors import CtxPipeError


class StackError(CtxPipeError):
    """Base class for local-stack errors."""


class ToolNotFoundError(StackError):
    """A program the stack needs (java, mvn, redis-server) is missing or too old."""

    def __init__(self, tool: str, hint: str) -> None:
        super().__init__(f"{tool} not found on PATH; {hint}")
        self.tool = tool


class JavaNotFoundError(ToolNotFoundError):
    def __init__(self, detail: str = "") -> None:
        hint = "install a JDK/JRE 17+ (apt-get install -y openjdk-17-jre-headless) or put it on PATH"
        super().__init__("java", f"{detail}{hint}")


class MavenNotFoundError(ToolNotFoundError):
    def __init__(self) -> None:
        super().__init__(
            "mvn", "it is needed once to download the jars: apt-get install -y maven"
        )


class RedisServerNotFoundError(ToolNotFoundError):
    def __init__(self) -> None:
        super().__init__("redis-server", "install it: apt-get install -y redis-server")


class PortInUseError(StackError):
    """A port the stack wants is held by a process the stack did not start."""

    def __init__(self, service: str, host: str, port: int, setting: str) -> None:
        super().__init__(
            f"port {port} on {host} ({service}) is already in use by another process; "
            f"stop it (see `ss -ltnp 'sport = :{port}'`) or choose another port with {setting}"
        )
        self.service = service
        self.port = port


class DownloadError(StackError):
    """Maven could not resolve the jars of a service."""

    def __init__(self, what: str, code: int, log: Path, setting: str) -> None:
        super().__init__(
            f"mvn could not download {what} (exit {code}); see {log}; check access to "
            f"Maven Central and the version ({setting})"
        )


class ServiceExitedError(StackError):
    """A server exited while starting."""

    def __init__(self, service: str, log: Path, hint: str = "") -> None:
        tail = f" (last error: {hint})" if hint else ""
        super().__init__(f"{service} exited during startup; see {log}{tail}")
        self.service = service
        self.log = log


class StartupTimeoutError(StackError):
    """A server did not pass its health check in time."""

    def __init__(self, service: str, timeout_s: float, log: Path) -> None:
        super().__init__(
            f"{service} was not healthy after {timeout_s:.0f}s and was stopped; see {log} "
            "(raise CTX_STACK__START_TIMEOUT_S on a slow machine)"
        )
        self.service = service


class StopError(StackError):
    """A server did not exit even after SIGKILL."""

    def __init__(self, service: str, pid: int) -> None:
        super().__init__(f"{service} (pid {pid}) did not exit after SIGKILL; check `ps -p {pid}`")


class StackConfigError(StackError):
    """Settings the local stack cannot serve (unknown service, non-loopback host...)."""


class PackageInstallError(ToolNotFoundError):
    """A program the stack needs is missing and could not be installed here."""

    def __init__(self, tool: str, hint: str) -> None:
        super().__init__(tool, hint)
