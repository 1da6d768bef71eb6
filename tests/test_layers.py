"""The layer contract ([tool.importlinter] in pyproject.toml): imports only run downward."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_run_downward() -> None:
    # A child process: import-linter builds the graph from the source tree, not this
    # interpreter's modules, and its output says which import broke which layer.
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(no_cache=True))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 kept, 0 broken" in run.stdout


def test_no_module_imports_a_bare_top_level_folder() -> None:
    # ctxpipe/<name> links to the design card's top-level folders; importing one of them by
    # its bare name would load a second copy of every module under another name.
    bare = ("streams", "processors", "storage", "assembly", "infra")
    offenders = []
    for folder in ("ctxpipe", *bare, "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                words = line.split()
                if len(words) >= 2 and words[0] in ("import", "from") and words[1].split(".")[0] in bare:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
