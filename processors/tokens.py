"""Token counting behind one interface, plus truncation to a token budget.

Two counters:

* :class:`LocalTokenCounter` — pure Python, no I/O, microseconds per chunk. It is
  deliberately *conservative* (it over-counts against Claude's tokenizer for English
  prose, code, numbers and markup) so a window it says fits does fit.
* :class:`AnthropicTokenCounter` — exact, through the API's ``count_tokens`` endpoint;
  for calibration or a final check when a key is configured. Never used by tests.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from ctxpipe.processors.exceptions import TokenCountError

if TYPE_CHECKING:
    import anthropic

__all__ = [
    "AnthropicTokenCounter",
    "LocalTokenCounter",
    "TokenCounter",
    "default_counter",
    "truncate_to_tokens",
]


@runtime_checkable
class TokenCounter(Protocol):
    def count(self, text: str) -> int:
        """Tokens ``text`` takes in a Claude prompt (an estimate or exact, see the class)."""
        ...


# Byte tables for LocalTokenCounter.count: ASCII letters -> "a", whitespace -> "s" (a
# space) or "w" (the rest), every other byte -> " " (so bytes.split() yields the runs).
_LETTER_BYTES: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_LETTERS_ONLY: Final = bytes(ord("a") if b in _LETTER_BYTES else ord(" ") for b in range(256))
_WHITESPACE_ONLY: Final = bytes(
    ord("s") if b == ord(" ") else ord("w") if b in b"\t\n\r\x0b\x0c" else ord(" ") for b in range(256)
)
_W_AS_S: Final = bytes.maketrans(b"w", b"s")


class LocalTokenCounter:
    """A fast, deliberately conservative estimate of Claude's token count.

    The text is cut the way byte-level BPE pre-tokenizers cut it, and each piece is
    charged an upper-ish bound:

    ============================  =========================  ==========================
    piece                         charged                    why
    ============================  =========================  ==========================
    run of ASCII letters, len L   ceil(L / 4)                common English words of up
                                                             to 4 letters are 1 token,
                                                             longer ones ~1 per 4-6
                                                             letters; camelCase splits
                                                             ~1 per 4 too
    ASCII digit                   1 each                     the worst case (digit-by-
                                                             digit number tokenization)
    ASCII punctuation / symbol    1 each                     code and JSON are mostly
                                                             these; BPE often merges
                                                             them, never splits them
    whitespace run                0 for one space (it        indentation runs merge
                                  rides on the next word),   into ~1 token per 4
                                  else ceil(len / 4)
    non-ASCII character           its UTF-8 byte length      byte-level BPE never uses
                                                             more than 1 token a byte
    ============================  =========================  ==========================

    Assumption: Claude's tokenizers average ~3.5-4.5 characters a token on English
    prose and ~3-3.5 on code; this rule charges ~3.4 on short-word prose (e.g. "The
    quick brown fox jumps over the lazy dog." -> 13 vs ~10 real), ~2.5 on code and
    less on numbers and JSON, so it over-counts by roughly 20-60%. Known blind spot:
    long random letter strings (base64 without digits, unusual words) can be cut finer
    than 4 letters a token; non-ASCII text is over-counted 2-3x by the byte rule. Use
    :class:`AnthropicTokenCounter` to calibrate against a real model.

    Properties the rest of the pipeline relies on (tested): ``count("") == 0``; counts
    never decrease as a prefix grows (so truncation can binary-search); and
    ``count(a + b) <= count(a) + count(b) + 1`` (the +1 is two single spaces meeting).
    """

    def count(self, text: str) -> int:
        # The table above over the UTF-8 bytes: every byte costs one token (a non-ASCII
        # character's bytes, digits, punctuation) except letters and whitespace, which
        # cost ceil(run / 4) a run (a lone space nothing); non-ASCII bytes break runs as
        # non-ASCII characters do. Every loop is a bytes method (C): a few times faster
        # than a Python loop over regex runs.
        raw = text.encode("utf-8", "surrogatepass")
        letters = raw.translate(_LETTERS_ONLY).split()
        spaces = raw.translate(_WHITESPACE_ONLY).split()
        # ceil(n / 4) for every run at once: each run padded with 3, then whole groups of 4.
        letter_tokens = (b"aaa ".join(letters) + b"aaa").count(b"aaaa") if letters else 0
        space_tokens = 0
        if spaces:
            padded = b"sss ".join(spaces).translate(_W_AS_S) + b"sss"
            space_tokens = padded.count(b"ssss") - spaces.count(b"s")  # lone spaces are free
        rest = len(raw) - sum(map(len, letters)) - sum(map(len, spaces))
        return rest + letter_tokens + space_tokens


class AnthropicTokenCounter:
    """Exact counts from ``client.messages.count_tokens`` for ``model``.

    The text is sent as one user message, so the count includes the few tokens of
    message framing: slightly more than the bare text, which errs on the safe side.
    One HTTP round trip per call: use it for calibration and final checks, not per chunk.
    """

    def __init__(
        self,
        model: str,
        *,
        client: anthropic.Anthropic | None = None,
        api_key: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if client is None:
            # Imported lazily: the SDK is slow to import and most processes never count remotely.
            import anthropic

            client = anthropic.Anthropic(api_key=api_key, timeout=timeout_s, max_retries=2)
        self.model = model
        self._client = client

    @classmethod
    def from_env(cls, model: str) -> AnthropicTokenCounter | None:
        """A counter when ``ANTHROPIC_API_KEY`` is set, else None (callers fall back)."""
        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            return None
        return cls(model, api_key=key)

    def count(self, text: str) -> int:
        if not text:
            return 0
        import anthropic

        try:
            result = self._client.messages.count_tokens(
                model=self.model, messages=[{"role": "user", "content": text}]
            )
        except (anthropic.APIConnectionError, anthropic.RateLimitError, anthropic.InternalServerError) as exc:
            raise TokenCountError(f"count_tokens failed: {exc}", retriable=True) from exc
        except anthropic.APIError as exc:
            raise TokenCountError(f"count_tokens failed: {exc}", retriable=False) from exc
        return int(result.input_tokens)


def default_counter(model: str | None = None) -> TokenCounter:
    """The local counter; the API counter only when asked for a model and a key is set."""
    if model is not None:
        remote = AnthropicTokenCounter.from_env(model)
        if remote is not None:
            return remote
    return LocalTokenCounter()


_LOCAL = LocalTokenCounter()
# Move the cut back to a line break or space when one lies within this share of it.
_BOUNDARY_WINDOW = 0.2


def truncate_to_tokens(
    text: str,
    max_tokens: int,
    counter: TokenCounter | None = None,
    *,
    from_end: bool = False,
) -> str:
    """The longest prefix (or suffix with ``from_end``) of ``text`` within ``max_tokens``.

    Binary search over the cut, so O(log n) counts; the cut moves back to a whitespace
    boundary when one is near, so words are not split unless a single word is too long.
    Uses the local counter unless another is given.
    """
    if max_tokens < 0:
        raise ValueError("max_tokens must be >= 0")
    ctr = counter if counter is not None else _LOCAL
    if ctr.count(text) <= max_tokens:
        return text

    def piece(n: int) -> str:
        return text[len(text) - n :] if from_end else text[:n]

    lo, hi = 0, len(text)  # piece(lo) fits (the empty string), piece(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ctr.count(piece(mid)) <= max_tokens:
            lo = mid
        else:
            hi = mid
    cut = piece(lo)
    floor = int(lo * (1 - _BOUNDARY_WINDOW))
    # Prefer a line break near the cut, then any whitespace; else cut mid-word.
    if from_end:
        start = len(text) - lo
        if start == 0 or text[start - 1].isspace():
            return cut  # already starts on a boundary
        newline = cut.find("\n", 0, lo - floor)
        if newline >= 0 and newline + 1 < lo:
            return cut[newline + 1 :]
        for i in range(0, lo - floor):
            if cut[i].isspace() and i + 1 < lo:
                return cut[i + 1 :]
        return cut
    if lo == len(text) or text[lo].isspace():
        return cut  # already ends on a boundary
    newline = cut.rfind("\n", max(floor, 1), lo)
    if newline >= 1:
        return cut[:newline]
    for i in range(lo - 1, max(floor, 1) - 1, -1):
        if cut[i].isspace():
            return cut[:i]
    return cut
