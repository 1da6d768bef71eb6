"""Object-key segments (pure logic) and their round trip on the real S3 server: every valid
tenant name gets a key, names that fit keep today's key, no two names share one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ctxpipe.core.settings import S3Settings
from ctxpipe.storage.cold import ColdStore, key_segment, summary_key, window_prefix
from ctxpipe.storage.names import HASH_MARK, MAX_SEGMENT_BYTES

ODD_NAMES = [".", "..", "...", "a" * 256, "😀" * 64, "漢" * 40, "x" * 66 + "é", "%2E", "=" + "0" * 64]


def test_names_that_fit_keep_todays_percent_encoded_segment() -> None:
    assert key_segment("acme", "tenant") == "acme"
    assert key_segment("a b/é", "tenant") == "a%20b%2F%C3%A9"
    assert key_segment("...", "tenant") == "..."


def test_dot_names_and_long_names_get_segments_the_encoding_never_makes() -> None:
    assert key_segment(".", "tenant") == "%2E"
    assert key_segment("..", "tenant") == "%2E%2E"
    long = key_segment("😀" * 64, "tenant")
    assert HASH_MARK in long and len(long.encode()) <= MAX_SEGMENT_BYTES
    assert len(key_segment("a" * MAX_SEGMENT_BYTES, "tenant")) == MAX_SEGMENT_BYTES
    assert HASH_MARK in key_segment("a" * (MAX_SEGMENT_BYTES + 1), "tenant")


def test_no_two_names_share_a_segment() -> None:
    names = [*ODD_NAMES, "acme", "%252E", "a" * 255, "a" * 257]
    segments = [key_segment(n, "tenant") for n in names]
    assert len(set(segments)) == len(names)
    assert all(len(s.encode()) <= MAX_SEGMENT_BYTES for s in segments)


def test_empty_names_are_refused() -> None:
    with pytest.raises(ValueError, match="tenant must be non-empty"):
        key_segment("", "tenant")


@pytest.fixture
async def cold(s3_settings: S3Settings) -> AsyncIterator[ColdStore]:
    async with ColdStore(s3_settings) as store:
        yield store


@pytest.mark.parametrize("tenant", ODD_NAMES)
async def test_every_valid_name_round_trips_on_s3(cold: ColdStore, tenant: str) -> None:
    await cold.put_lines(f"{window_prefix(tenant)}m/x.jsonl.gz", [b'{"n":1}'])
    await cold.put_json(summary_key(tenant, tenant), {"tenant": tenant})
    assert await cold.list_keys(window_prefix(tenant)) == [f"{window_prefix(tenant)}m/x.jsonl.gz"]
    assert await cold.get_json(summary_key(tenant, tenant)) == {"tenant": tenant}
