"""System packages the local stack needs, installed from Debian's packages when missing.

A fresh machine has Python, Java and Maven but not, say, ``redis-server``. ``ensure`` installs
the package once with ``apt-get`` (running ``apt-get update`` first when the package lists are
empty, and again when the package is not found in stale lists), without starting the
service the package ships (we run our own server on our own port). When that is impossible
(no apt-get, not root and no password-less sudo, no network) it raises one
:class:`~ctxpipe.infra.exceptions.PackageInstallError` that says what to run by hand.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from ctxpipe.infra.exceptions import PackageInstallError

APT_LISTS = Path("/var/lib/apt/lists")
# Debian's hook for "may a package's maintainer script start its service?": exit 101 = no.
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
_DENY_STARTS = "#!/bin/sh\n# written by ctxpipe while it installs a package; removed afterwards\nexit 101\n"
_TIMEOUT_S = 900


def _quiet(_: str) -> None:
    pass


def ensure(
    binary: str,
    package: str,
    *,
    notify: Callable[[str], None] = _quiet,
    log: Path | None = None,
    apt_lists: Path = APT_LISTS,
    policy_rc_d: Path = POLICY_RC_D,
) -> str:
    """The path of ``binary``, installing Debian's ``package`` first when it is missing."""
    found = shutil.which(binary)
    if found is not None:
        return found
    manual = f"install it by hand: apt-get install -y {package}"
    apt = shutil.which("apt-get")
    if apt is None:
        raise PackageInstallError(binary, f"this machine has no apt-get; install {package} with its package manager")
    prefix = _privilege(binary, manual)
    notify(f"installing {package} from Debian's packages (once)")
    with _apt_log(log) as out, _no_service_starts(policy_rc_d, enabled=not prefix):
        if not _lists_present(apt_lists):
            _run([*prefix, apt, "update"], out, binary, manual)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [*prefix, apt, "install", "-y", "--no-install-recommends", package]
        if subprocess.run(install, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=_TIMEOUT_S).returncode != 0:
            # Lists that predate the package (or a mirror change): refresh once and retry.
            _run([*prefix, apt, "update"], out, binary, manual)
            _run(install, out, binary, manual, env=env)
    found = shutil.which(binary)
    if found is None:
        raise PackageInstallError(binary, f"{package} installed but {binary} is not on PATH; {manual}")
    return found


def ensure_browser(
    *, notify: Callable[[str], None] = _quiet, log: Path | None = None, apt_lists: Path = APT_LISTS,
    policy_rc_d: Path = POLICY_RC_D,
) -> tuple[str, str]:
    """(chromium, chromedriver): the headless browser and its WebDriver the console's
    browser tests drive (tests/console), from Debian's ``chromium`` and ``chromium-driver``."""
    browser = ensure("chromium", "chromium", notify=notify, log=log, apt_lists=apt_lists, policy_rc_d=policy_rc_d)
    driver = ensure("chromedriver", "chromium-driver", notify=notify, log=log, apt_lists=apt_lists,
                    policy_rc_d=policy_rc_d)
    return browser, driver


def _privilege(binary: str, manual: str) -> list[str]:
    """``[]`` as root, ``["sudo", "-n"]`` with password-less sudo, else an error."""
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if sudo is not None and subprocess.run([sudo, "-n", "true"], capture_output=True, timeout=30).returncode == 0:
        return [sudo, "-n"]
    raise PackageInstallError(binary, f"installing it needs root (or password-less sudo); {manual}")


def _lists_present(apt_lists: Path) -> bool:
    # `apt-get update` leaves one *_Packages* file per source; a fresh image has none.
    return any(apt_lists.glob("*_Packages*"))


def _run(cmd: list[str], out: int, binary: str, manual: str, env: dict[str, str] | None = None) -> None:
    try:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=_TIMEOUT_S).returncode
    except subprocess.TimeoutExpired:
        raise PackageInstallError(binary, f"`{' '.join(cmd)}` took over {_TIMEOUT_S}s; {manual}") from None
    if code != 0:
        raise PackageInstallError(binary, f"`{' '.join(cmd)}` failed (exit {code}); {manual}")


@contextlib.contextmanager
def _apt_log(log: Path | None) -> Iterator[int]:
    if log is None:
        yield subprocess.DEVNULL
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        yield f.fileno()


@contextlib.contextmanager
def _no_service_starts(policy_rc_d: Path, *, enabled: bool) -> Iterator[None]:
    """Keep the package's own service (a redis-server on 6379) from starting, with Debian's
    policy-rc.d hook; one that exists already is left as it is. Callers hold the stack's
    lock, so two installs never race on the hook."""
    if not enabled or policy_rc_d.exists():
        yield
        return
    policy_rc_d.write_text(_DENY_STARTS)
    policy_rc_d.chmod(0o755)
    try:
        yield
    finally:
        policy_rc_d.unlink(missing_ok=True)
