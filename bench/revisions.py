"""Run one bench under two revisions of the code, alternately, in one session: the
side-by-side comparison a change's "before and after" needs on a machine whose absolute
speed varies from run to run.

    python bench/revisions.py --before 106ccee [--after HEAD] [--rounds 2] \\
        [--keep 'at 20/s|saturated'] -- bench/assembly_latency.py --configs onnx

Each revision is checked out once into a temporary git worktree; the bench runs there
(its own code first on ``PYTHONPATH``), rounds alternate before/after so drift in the
machine's speed hits both sides alike. The local stack, the jar cache and the exported
model are shared (``CTX_STACK__HOME``, ``CTX_EMBEDDING__ONNX_DIR`` of this checkout).
Full outputs go to ``--out`` (a temporary folder by default); the lines matching
``--keep`` are printed per revision and round at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def _checkout(rev: str, where: Path) -> Path:
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    path = where / sha[:12]
    if not path.exists():
        _git("worktree", "add", "--detach", str(path), sha)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="a git revision")
    ap.add_argument("--after", default="HEAD", help="a git revision (default HEAD)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keep", default=r"p50|p99|events/s|texts/s|req/s", help="regex of the output lines to compare")
    ap.add_argument("--out", type=Path, default=None, help="folder for the full outputs")
    ap.add_argument("bench", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...], relative to the project root")
    args = ap.parse_args()
    bench = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if not bench:
        ap.error("name the bench after --")
    out = args.out or Path(tempfile.mkdtemp(prefix="ctxpipe-revisions-"))
    out.mkdir(parents=True, exist_ok=True)
    trees = Path(tempfile.mkdtemp(prefix="ctxpipe-trees-"))
    stack = ROOT / ".stack"
    env = {
        **os.environ,
        "CTX_STACK__HOME": os.environ.get("CTX_STACK__HOME", str(stack)),
        "CTX_EMBEDDING__ONNX_DIR": os.environ.get("CTX_EMBEDDING__ONNX_DIR", str(stack / "models")),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }
    keep = re.compile(args.keep)
    kept: list[tuple[str, int, list[str]]] = []
    try:
        paths = {label: _checkout(rev, trees) for label, rev in (("before", args.before), ("after", args.after))}
        for label, path in paths.items():
            print(f"{label}: {getattr(args, label)} = {_git('log', '-1', '--format=%h %s', getattr(args, label))[:90]}",
                  flush=True)
        for rnd in range(1, args.rounds + 1):
            for label, path in paths.items():
                log = out / f"{label}-{rnd}.log"
                start = time.monotonic()
                with log.open("w") as f:
                    code = subprocess.run(
                        [sys.executable, str(path / bench[0]), *bench[1:]], cwd=path, stdout=f,
                        stderr=subprocess.STDOUT, env={**env, "PYTHONPATH": str(path)},
                    ).returncode
                lines = [ln.rstrip() for ln in log.read_text().splitlines() if keep.search(ln)]
                print(f"round {rnd} {label}: exit {code} in {time.monotonic() - start:.0f} s ({log})", flush=True)
                if code != 0:
                    print(log.read_text()[-2000:], flush=True)
                    return 1
                kept.append((label, rnd, lines))
    finally:
        for path in trees.glob("*"):
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)
        shutil.rmtree(trees, ignore_errors=True)
    print()
    for label, rnd, lines in kept:
        print(f"== {label}, round {rnd}")
        for line in lines:
            print(f"   {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
