"""ensure_browser: Debian's chromium and chromium-driver installed when missing, through
the same ``ensure`` that installs redis-server. A fake ``apt-get`` (the only thing on PATH)
records its calls and "installs" each package's program, so nothing on the machine changes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ctxpipe.infra import packages

FAKE_APT = """#!/bin/sh
echo "$@" >> "{calls}"
if [ "$1" = "update" ]; then /usr/bin/touch "{lists}/deb_main_binary-amd64_Packages.lz4"; exit 0; fi
if [ "$1" = "install" ]; then
  case "$4" in chromium) prog=chromium ;; chromium-driver) prog=chromedriver ;; *) exit 100 ;; esac
  printf '#!/bin/sh\\n' > "{bin}/$prog"; /usr/bin/chmod +x "{bin}/$prog"; exit 0
fi
exit 1
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs as root here")
def test_missing_browser_and_driver_are_installed_from_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, lists, calls = tmp_path / "bin", tmp_path / "lists", tmp_path / "calls"
    bin_dir.mkdir()
    lists.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(FAKE_APT.format(calls=calls, lists=lists, bin=bin_dir))
    apt.chmod(apt.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))  # the real chromium in /usr/bin is not seen
    said: list[str] = []
    got = packages.ensure_browser(notify=said.append, apt_lists=lists, policy_rc_d=tmp_path / "policy")
    assert got == (str(bin_dir / "chromium"), str(bin_dir / "chromedriver"))
    assert calls.read_text().splitlines() == [
        "update", "install -y --no-install-recommends chromium", "install -y --no-install-recommends chromium-driver"]
    assert said == ["installing chromium from Debian's packages (once)",
                    "installing chromium-driver from Debian's packages (once)"]
    # Present now: a second call installs nothing.
    assert packages.ensure_browser(apt_lists=lists) == got and len(calls.read_text().splitlines()) == 3
