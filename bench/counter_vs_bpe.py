"""How far LocalTokenCounter is from a real byte-level BPE tokenizer on real conversation turns.

    pip download anthropic==0.38.0 --no-deps -d /tmp/x
    unzip -o /tmp/x/anthropic-0.38.0-py3-none-any.whl anthropic/tokenizer.json -d /tmp/x
    python bench/counter_vs_bpe.py --tokenizer /tmp/x/anthropic/tokenizer.json

The tokenizer is the one the Anthropic SDK shipped up to 0.38 (Claude 2 era), read with the
``tokenizers`` library; nothing is downloaded from a model hub. Newer Claude tokenizers are
not published and count differently (Anthropic says some newer models use up to ~35 % more
tokens for the same text), so a local count that is only just above this tokenizer's is
not safe for them: the ratio, not just its sign, is what this prints.

Texts: every turn of the LongMemEval oracle sessions (bench/data/longmemeval), and the
framing strings the window renders around items. For each: the local count over the BPE
count (ratio > 1: the local counter over-counts), overall and by kind of text.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctxpipe.processors.tokens import LocalTokenCounter  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "longmemeval" / "longmemeval_oracle.jsonl.gz"


def turns() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    with gzip.open(DATA) as f:
        for line in f:
            o = orjson.loads(line)
            if "session" in o:
                out.extend((role, text) for role, text in o["session"]["turns"] if text)
    return out


def quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def report(name: str, texts: Sequence[str], local: Callable[[str], int], bpe: Callable[[str], int]) -> None:
    loc = [local(t) for t in texts]
    real = [bpe(t) for t in texts]
    ratios = [a / b for a, b in zip(loc, real, strict=True) if b]
    under = sum(a < b for a, b in zip(loc, real, strict=True))
    print(
        f"{name:<22} {len(texts):>6} texts  local {sum(loc):>9,}  bpe {sum(real):>9,}  "
        f"total ratio {sum(loc) / max(1, sum(real)):.3f}  per text min {min(ratios):.3f} "
        f"p1 {quantile(ratios, 0.01):.3f} p50 {quantile(ratios, 0.5):.3f} p99 {quantile(ratios, 0.99):.3f}  "
        f"under-counted {under}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json from the anthropic<=0.38 wheel")
    args = ap.parse_args()
    from tokenizers import Tokenizer  # the tokenizers library (installed with the embedder)

    tok = Tokenizer.from_file(args.tokenizer)
    counter = LocalTokenCounter()

    def bpe(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    data = turns()
    print(f"{len(data)} turns of {DATA.name}")
    report("all turns", [t for _, t in data], counter.count, bpe)
    for role in ("user", "assistant"):
        report(f"{role} turns", [t for r, t in data if r == role], counter.count, bpe)
    ascii_only = [t for _, t in data if t.isascii()]
    report("ASCII-only turns", ascii_only, counter.count, bpe)
    report("turns with non-ASCII", [t for _, t in data if not t.isascii()], counter.count, bpe)
    print("\nframing strings (local / bpe):")
    from ctxpipe.assembly.anthropic_format import RETRIEVED_HEADER

    for s in ("[2023-05-21 user] ", "[2023-05-21 assistant] ", "2023-05-21", "2023-05-21 (Sun)", "user: ",
              "assistant: ", "\n", "\n\n", RETRIEVED_HEADER):
        print(f"  {s!r:<60} {counter.count(s):>3} / {bpe(s):>3}")


if __name__ == "__main__":
    main()
