"""Lifecycle of the local stack: reuse, clean shutdown, and one-line errors."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ctxpipe.core.settings import PROJECT_ROOT, Settings
from ctxpipe.infra.exceptions import PortInUseError, ServiceExitedError, StartupTimeoutError
from ctxpipe.infra.stack import Stack
from ctxpipe.infra.testing import free_port, isolated_stack


def _pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _processes_under(home: Path) -> list[int]:
    """Live processes whose command line mentions ``home`` (our servers always do)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if str(home) in cmdline and not _pid_gone(int(proc.name)):
            found.append(int(proc.name))
    return found


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctxpipe.infra", *args],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def _isolated_env(iso: Stack, path: str, settings: Settings | None = None) -> dict[str, str]:
    settings = settings or iso.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTX_")}
    env.update(
        PATH=path,
        CTX_STACK__HOME=str(iso.options.home),
        CTX_STACK__JARS_DIR=str(iso.options.jars),
        CTX_REDIS__URL=settings.redis.url,
        CTX_S3__ENDPOINT_URL=settings.s3.endpoint_url,
        CTX_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        CTX_KAFKA__CONTROLLER_PORT=str(settings.kafka.controller_port),
    )
    return env


@pytest.mark.stack
def test_up_twice_reuses_running_servers(stack: Stack) -> None:
    before = stack.pids()
    assert set(before) == {"redis", "kafka", "s3"}
    assert Stack(stack.settings).up() == set()
    assert stack.pids() == before


@pytest.mark.stack
def test_status_prints_one_line_per_service(stack: Stack) -> None:
    out = _run_cli(["status"], {**os.environ})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["redis", "kafka", "s3"]
    assert all(" running " in ln for ln in lines)


@pytest.mark.stack
@pytest.mark.slow
def test_down_leaves_no_process(stack: Stack, tmp_path: Path) -> None:
    # A second full stack on free ports, so the shared one keeps serving other tests.
    iso = isolated_stack(stack.settings, tmp_path / "stack")
    try:
        assert iso.up() == {"redis", "kafka", "s3"}
        pids = iso.pids()
        assert len(pids) == 3 and _processes_under(iso.home)
        # The window log and archive yield to requests; Redis is on every request's path.
        background = iso.options.background_nice
        assert background > 0
        assert {n: _nice(p) for n, p in pids.items()} == {"redis": 0, "kafka": background, "s3": background}
        assert iso.up() == set() and iso.pids() == pids  # reuse, also for a fresh Stack object
    finally:
        stopped = iso.down()
    assert stopped == {"redis", "kafka", "s3"}
    assert all(_pid_gone(pid) for pid in pids.values())
    assert _processes_under(iso.home) == []
    assert not list((iso.home / "run").glob("*.pid"))
    assert iso.down() == set()


def test_port_taken_by_a_stranger_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        iso = isolated_stack(Settings(), tmp_path / "stack")
        settings = iso.settings.model_copy(
            update={"redis": iso.settings.redis.model_copy(update={"url": f"redis://127.0.0.1:{port}/0"})}
        )
        with pytest.raises(PortInUseError) as info:
            Stack(settings, options=iso.options).up(only=["redis"])
        message = str(info.value)
        assert "\n" not in message and f"port {port}" in message and "CTX_REDIS__URL" in message
        assert not list((tmp_path / "stack" / "run").glob("*.pid"))

        out = _run_cli(["up", "--only", "redis"], _isolated_env(iso, os.environ["PATH"], settings))
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"error: port {port} ")


def test_java_missing_is_one_clear_line(tmp_path: Path) -> None:
    iso = isolated_stack(Settings(), tmp_path / "stack")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("redis-server", "mvn"):  # everything but java
        found = shutil.which(tool)
        if found is not None:
            (bin_dir / tool).symlink_to(found)
    out = _run_cli(["up"], _isolated_env(iso, str(bin_dir)))
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: java not found on PATH; install a JDK")
    assert _processes_under(iso.home) == []


def test_maven_missing_is_one_clear_line(tmp_path: Path) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("java is not installed")
    iso = isolated_stack(Settings(), tmp_path / "stack")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(os.path.realpath(java))
    env = _isolated_env(iso, str(bin_dir))
    env["CTX_STACK__JARS_DIR"] = str(tmp_path / "no-jars")  # forces a download
    env["CTX_STACK__S3PROXY_VERSION"] = "0.0.0-missing"
    out = _run_cli(["up", "--only", "s3"], env)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: mvn not found on PATH")


def test_unknown_service_is_one_clear_line() -> None:
    out = _run_cli(["down", "--only", "kafka,zookeeper"], {**os.environ})
    assert out.returncode == 1
    assert out.stderr == "error: unknown service(s) zookeeper; choose from redis, kafka, s3\n"


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


def _isolated(tmp_path: Path, timeout_s: float = 90.0) -> Stack:
    return isolated_stack(Settings(), tmp_path / "stack", start_timeout_s=timeout_s)


def test_server_exiting_during_startup_points_to_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iso = _isolated(tmp_path)
    script = "echo '# FATAL CONFIG FILE ERROR: bad directive' >&2; exit 3"
    monkeypatch.setattr(type(iso._services["redis"]), "command", lambda self: ["sh", "-c", script])
    with pytest.raises(ServiceExitedError) as info:
        iso.up(only=["redis"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("redis exited during startup; see ")
    assert str(iso.log_path("redis")) in message and "bad directive" in message
    assert iso.pids() == {}


def test_server_never_healthy_times_out_and_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iso = _isolated(tmp_path, timeout_s=1.0)
    # sh stays the parent of sleep (no exec): the child must go too. $0 names our home.
    command = ["sh", "-c", "sleep 600; :", str(iso.home)]
    monkeypatch.setattr(type(iso._services["redis"]), "command", lambda self: command)
    with pytest.raises(StartupTimeoutError) as info:
        iso.up(only=["redis"])
    assert "\n" not in str(info.value) and "was not healthy after 1s and was stopped" in str(info.value)
    assert iso.pids() == {}
    assert _processes_under(iso.home) == []
