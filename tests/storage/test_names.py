"""Storage names from user names: short ones unchanged, long or odd ones hashed, no collision."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from ctxpipe.storage.cold import scope_snapshot_key, summary_key, window_key, window_prefix
from ctxpipe.storage.names import is_hashed, safe_segment, unsafe_segment

NAMES = [
    "acme", "a:b", "a b", "ünï", "x%2Fy", "x%%y", "a" * 253, "a" * 254, "a" * 255, "a" * 256, "a" * 1000,
    "中" * 30, "中" * 31, "😀" * 64, "😀" * 63 + "a", "%2E", "%%",
]


@pytest.mark.parametrize("max_bytes", [255, 253, 250])
def test_every_name_fits_and_no_two_collide(max_bytes: int) -> None:
    segments = {name: safe_segment(name, "tenant", max_bytes=max_bytes) for name in [*NAMES, ".", ".."]}
    assert len(set(segments.values())) == len(segments)
    for name, seg in segments.items():
        assert 0 < len(seg.encode()) <= max_bytes
        assert "/" not in seg and seg not in (".", "..")
        assert unsafe_segment(seg) in (name, None)
        assert (unsafe_segment(seg) is None) == is_hashed(seg)


def test_names_that_fit_keep_their_encoded_form() -> None:
    for name in ["acme", "a:b", "ünï", "a" * 255]:
        assert safe_segment(name, "tenant") == quote(name, safe="")
    assert safe_segment(".", "tenant", dots=True) == "."
    assert safe_segment("..", "tenant") == "%2E%2E"


def test_a_hashed_name_keeps_a_readable_prefix_without_a_cut_escape() -> None:
    seg = safe_segment("😀" * 64, "tenant")
    head, digest = seg.split("%%")
    assert len(digest) == 64 and head.startswith("%F0%9F%98%80")
    assert len(head) % 3 == 0  # whole %XX escapes only
    assert safe_segment("a" * 300, "t") != safe_segment("a" * 301, "t")


def test_empty_names_are_refused() -> None:
    with pytest.raises(ValueError, match="tenant must be non-empty"):
        safe_segment("", "tenant")


def test_cold_keys_fit_the_file_backend_for_every_valid_name() -> None:
    for name in [*NAMES, ".", ".."]:
        for key in (scope_snapshot_key(name, name), summary_key(name, name), window_key(name, name), window_prefix(name)):
            parts = key.rstrip("/").split("/")
            assert all(0 < len(part.encode()) <= 255 and part not in (".", "..") for part in parts), key
    assert summary_key("acme", "s:1") == "summaries/acme/s%3A1.json"  # short names unchanged
