"""`pip install .` ships the console's templates and static files (package data)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "ctxpipe" / "console"


def test_the_wheel_holds_the_templates_and_static_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".stack", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "docs"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("ctxpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {f"ctxpipe/console/{p.relative_to(CONSOLE)}" for p in CONSOLE.rglob("*")
              if p.is_file() and p.suffix in (".html", ".css", ".js")}
    assert len(wanted) >= 12 and wanted <= names, sorted(wanted - names)
