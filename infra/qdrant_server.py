"""A Qdrant server process on loopback, for tests of the server mode.

Users run the official Qdrant image or their own cluster; the project's tests start a
server binary (``CTX_TEST_QDRANT_BIN``, default ``../shared/bin/qdrant`` beside the checkout:
Qdrant built from source for machines without a container engine) on free ports with a
throwaway data folder, and stop it after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ctxpipe.core.settings import PROJECT_ROOT
from ctxpipe.infra.exceptions import ServiceExitedError, StackError, StartupTimeoutError
from ctxpipe.infra.testing import free_port

DEFAULT_BIN = PROJECT_ROOT.parent / "shared" / "bin" / "qdrant"


def qdrant_binary() -> Path | None:
    """The server binary to test with, or None when this machine has none."""
    path = Path(os.environ.get("CTX_TEST_QDRANT_BIN", str(DEFAULT_BIN)))
    return path if path.is_file() and os.access(path, os.X_OK) else None


@dataclass
class QdrantServer:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @classmethod
    def start(cls, binary: Path, home: Path, timeout_s: float = 60.0) -> QdrantServer:
        home.mkdir(parents=True, exist_ok=True)
        http, grpc = free_port(), free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CTX_", "QDRANT__"))},
            "QDRANT__SERVICE__HOST": "127.0.0.1",
            "QDRANT__SERVICE__HTTP_PORT": str(http),
            "QDRANT__SERVICE__GRPC_PORT": str(grpc),
            "QDRANT__STORAGE__STORAGE_PATH": str(home / "storage"),
            "QDRANT__STORAGE__SNAPSHOTS_PATH": str(home / "snapshots"),
            "QDRANT__TELEMETRY_DISABLED": "true",
            "QDRANT__LOG_LEVEL": "WARN",
        }
        log = home / "qdrant.log"
        with log.open("wb") as out:
            # cwd: the server writes a .qdrant-initialized marker where it runs.
            proc = subprocess.Popen([str(binary)], cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        server = cls(proc, f"http://127.0.0.1:{http}", log)
        try:
            server._wait_ready(timeout_s)
        except StackError:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise ServiceExitedError("qdrant", self.log)
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:  # noqa: S310 (loopback)
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise StartupTimeoutError("qdrant", timeout_s, self.log)
            time.sleep(0.2)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
