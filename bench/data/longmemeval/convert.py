"""Rebuild ``longmemeval_oracle.jsonl.gz`` from a git checkout holding LongMemEval's
per-question oracle files (see README.md here for the source and what is kept).

    python bench/data/longmemeval/convert.py /path/to/repo.git 959167b875dd...
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

FOLDER = "evaluations/data/lme_jsons"


def _git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    repo, commit = sys.argv[1], sys.argv[2]
    names = _git(repo, "ls-tree", "--name-only", commit, f"{FOLDER}/").split()
    sessions: dict[str, dict[str, object]] = {}
    questions = []
    for name in sorted(names):
        sessions_count = int(Path(name).name.split("_", 1)[0])
        if sessions_count > 6:  # the _S / _M haystacks: too large to keep here; oracle only
            continue
        raw = json.loads(_git(repo, "show", f"{commit}:{name}"))
        if raw["question_id"].endswith("_abs"):  # abstention: no evidence to find
            continue
        evidence = []
        for sid, date, turns in zip(raw["haystack_session_ids"], raw["haystack_dates"], raw["haystack_sessions"],
                                    strict=True):
            kept = [[t["role"], t["content"]] for t in turns]
            prior = sessions.setdefault(sid, {"id": sid, "date": date, "turns": kept})
            if prior["turns"] != kept:
                raise SystemExit(f"session {sid} differs between questions")
            evidence += [[sid, i] for i, t in enumerate(turns) if t.get("has_answer")]
        if not evidence:
            continue
        questions.append({
            "qid": raw["question_id"], "type": raw["question_type"], "question": raw["question"],
            "answer": str(raw["answer"]), "date": raw["question_date"],
            "sessions": list(raw["haystack_session_ids"]), "evidence": evidence,
        })
    out = Path(__file__).with_name("longmemeval_oracle.jsonl.gz")
    with gzip.GzipFile(out, "wb", mtime=0) as f:
        f.write(json.dumps({"sessions": len(sessions), "questions": len(questions)}).encode() + b"\n")
        for s in sessions.values():
            f.write(json.dumps({"session": s}, ensure_ascii=False).encode() + b"\n")
        for q in questions:
            f.write(json.dumps({"question": q}, ensure_ascii=False).encode() + b"\n")
    print(f"{len(sessions)} sessions, {len(questions)} questions -> {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
