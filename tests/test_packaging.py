"""What `pip install .` puts into site-packages: one top-level package, ctxpipe."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    # A copy of the sources (setuptools writes build/ into the tree it builds), built by
    # the installed setuptools (no download); the wheel is what `pip install .` installs.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".stack", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("ctxpipe-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ctxpipe", next(t for t in tops if t.endswith(".dist-info"))}
    # The design card's folders, through the links under ctxpipe/, with their data files.
    for path in ("ctxpipe/storage/hot.py", "ctxpipe/streams/ingest.py", "ctxpipe/processors/chunking.py",
                 "ctxpipe/assembly/window.py", "ctxpipe/infra/stack.py", "ctxpipe/app/cli.py",
                 "ctxpipe/core/event.schema.json", "ctxpipe/infra/kafka/pom.xml"):
        assert path in names, path
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["ctxpipe"]
