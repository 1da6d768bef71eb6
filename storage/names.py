"""Storage names derived from user names (tenant, scope, doc id): one safe segment each.

A name is percent-encoded (so ``/``, ``:`` and ``{`` cannot forge another key, folder or
hash tag). When the encoded form is longer than the place it goes allows (a folder name
is at most 255 bytes; S3Proxy's file backend makes each key segment one), it becomes a
readable prefix of the encoded form, the marker ``%%`` and the SHA-256 of the name.
``quote()`` writes every ``%`` as the start of a ``%XX`` escape, so ``%%`` never occurs
in an encoded name: a hashed name cannot equal an unhashed one, and two hashed names
differ by their digests. Names that fit keep their encoded form, so data written before
hashing existed keeps its names. ``.`` and ``..`` (a valid tenant) become ``%2E`` and
``%2E%2E``: no encoded name contains ``%2E`` (``quote`` leaves ``.`` alone), and a path
segment may not be ``.`` or ``..``.
"""

from __future__ import annotations

import hashlib
from typing import Final
from urllib.parse import quote, unquote

HASH_MARK: Final = "%%"
# Folder names and S3Proxy file-backend key segments: 255 bytes on Linux file systems.
MAX_SEGMENT_BYTES: Final = 255
_DIGEST_CHARS: Final = 64
# The readable part of a hashed name, so an operator can still tell names apart.
_READABLE: Final = 64


def safe_segment(value: str, what: str, *, max_bytes: int = MAX_SEGMENT_BYTES, dots: bool = False) -> str:
    """``value`` as one key, path or folder segment of at most ``max_bytes`` bytes.
    ``dots=True`` keeps ``.`` and ``..`` as they are (a segment behind a fixed prefix)."""
    if not value:
        raise ValueError(f"{what} must be non-empty")
    if max_bytes < len(HASH_MARK) + _DIGEST_CHARS:
        raise ValueError(f"a segment of {max_bytes} bytes cannot hold a hashed name")
    encoded = quote(value, safe="")
    if encoded in (".", "..") and not dots:
        return encoded.replace(".", "%2E")
    if len(encoded) <= max_bytes:  # ASCII only: len is the byte count
        return encoded
    keep = min(_READABLE, max_bytes - len(HASH_MARK) - _DIGEST_CHARS)
    head = encoded[:keep]
    cut = head.rfind("%", max(0, keep - 2))  # never end inside a %XX escape
    if cut >= 0:
        head = head[:cut]
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{head}{HASH_MARK}{digest}"


def is_hashed(segment: str) -> bool:
    return HASH_MARK in segment


def unsafe_segment(segment: str) -> str | None:
    """The name a segment stands for, None for a hashed one (its name is kept elsewhere)."""
    if is_hashed(segment):
        return None
    return unquote(segment)
