"""ctxpipe.infra.packages: install a missing program from Debian's packages, or say what to do.

A fake ``apt-get`` on PATH records its calls and "installs" by writing the binary, so the
logic runs for real without touching the machine's packages."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ctxpipe.infra import packages
from ctxpipe.infra.exceptions import PackageInstallError

FAKE_APT = """#!/bin/sh
echo "$@" >> "{calls}"
if [ "$1" = "update" ]; then touch "{lists}/deb_main_binary-amd64_Packages.lz4"; exit 0; fi
if [ "$1" = "install" ]; then
  if [ ! -e "{lists}/deb_main_binary-amd64_Packages.lz4" ]; then echo "E: Unable to locate package"; exit 100; fi
  test -e "{policy}" && cp "{policy}" "{seen_policy}"
  printf '#!/bin/sh\\necho fake\\n' > "{bin}/fake-server"; chmod +x "{bin}/fake-server"; exit 0
fi
exit 1
"""


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("bin", "lists", "calls", "policy", "seen_policy")}
    paths["bin"].mkdir()
    paths["lists"].mkdir()
    apt = paths["bin"] / "apt-get"
    apt.write_text(FAKE_APT.format(**{k: str(v) for k, v in paths.items()}))
    apt.chmod(apt.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{paths['bin']}:/usr/bin:/bin")
    return paths


def test_present_binary_is_not_installed(fake_apt: dict[str, Path]) -> None:
    assert Path(packages.ensure("sh", "dash", apt_lists=fake_apt["lists"])).name == "sh"
    assert not fake_apt["calls"].exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs as root here")
def test_empty_lists_are_updated_first_and_services_kept_from_starting(fake_apt: dict[str, Path]) -> None:
    said: list[str] = []
    path = packages.ensure("fake-server", "fake-server", notify=said.append,
                           apt_lists=fake_apt["lists"], policy_rc_d=fake_apt["policy"])
    assert Path(path) == fake_apt["bin"] / "fake-server"
    calls = fake_apt["calls"].read_text().splitlines()
    assert calls[0] == "update"
    assert calls[1] == "install -y --no-install-recommends fake-server"
    assert said == ["installing fake-server from Debian's packages (once)"]
    # The policy hook was in place during the install ("exit 101": no service starts) and is gone after.
    assert "exit 101" in fake_apt["seen_policy"].read_text()
    assert not fake_apt["policy"].exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs as root here")
def test_stale_lists_are_refreshed_once_when_the_package_is_not_found(fake_apt: dict[str, Path]) -> None:
    (fake_apt["lists"] / "old_Packages").touch()  # lists exist, but not the one with the package
    packages.ensure("fake-server", "fake-server", apt_lists=fake_apt["lists"], policy_rc_d=fake_apt["policy"])
    calls = fake_apt["calls"].read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["install", "update", "install"]


def test_an_existing_policy_hook_is_left_alone(fake_apt: dict[str, Path]) -> None:
    fake_apt["policy"].write_text("#!/bin/sh\nexit 0\n")
    with packages._no_service_starts(fake_apt["policy"], enabled=True):
        pass
    assert fake_apt["policy"].read_text() == "#!/bin/sh\nexit 0\n"


def test_no_apt_gives_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PackageInstallError, match="fake-server not found on PATH; this machine has no apt-get"):
        packages.ensure("fake-server", "fake-server")


def test_not_root_without_sudo_says_what_to_run(fake_apt: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("PATH", str(fake_apt["bin"]))  # no sudo there
    with pytest.raises(PackageInstallError, match=r"needs root .* apt-get install -y fake-server"):
        packages.ensure("fake-server", "fake-server", apt_lists=fake_apt["lists"])
    assert not fake_apt["calls"].exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs as root here")
def test_a_failed_install_names_the_command(fake_apt: dict[str, Path]) -> None:
    apt = fake_apt["bin"] / "apt-get"
    apt.write_text("#!/bin/sh\nexit 100\n")
    with pytest.raises(PackageInstallError, match=r"failed \(exit 100\); install it by hand"):
        packages.ensure("fake-server", "fake-server", apt_lists=fake_apt["lists"], policy_rc_d=fake_apt["policy"])
