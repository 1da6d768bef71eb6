"""Window recording: batched objects in a real S3 server (S3Proxy), found again by trace id
alone, logged to a real Kafka topic."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from ctxpipe.assembly.exceptions import WindowNotFoundError
from ctxpipe.assembly.recording import WindowRecorder, batch_key, load_window, new_trace_id, trace_time
from ctxpipe.core.settings import KafkaSettings, S3Settings, Settings
from ctxpipe.storage.cold import ColdStore, window_key

pytestmark = pytest.mark.stack


def test_trace_ids_are_uuid7_hex_that_sort_by_issue_time() -> None:
    a, b = new_trace_id(1_700_000_000_000), new_trace_id(1_700_000_000_001)
    assert len(a) == 32 and a < b
    assert uuid.UUID(a).version == 7 and uuid.UUID(a).variant == uuid.RFC_4122
    assert trace_time(a) == datetime.fromtimestamp(1_700_000_000, UTC)
    assert trace_time(uuid.uuid4().hex) is None  # ids recorded before batching
    assert batch_key("a/b", a, b) == f"windows/a%2Fb/20231114T2213/{a}-{b}.jsonl.gz"


def _payload(trace: str, n: int) -> bytes:
    return orjson.dumps({"format_version": 1, "trace_id": trace, "n": n, "text": "é" * (n % 5)})


async def test_windows_are_stored_one_object_per_tenant_and_flush_and_found_by_trace_id(
    settings: Settings, s3_settings: S3Settings, kafka_settings: KafkaSettings
) -> None:
    # A long flush interval: only drain() makes the recorder write.
    st = settings.model_copy(update={
        "s3": s3_settings, "kafka": kafka_settings,
        "assembly": settings.assembly.model_copy(update={"record_flush_s": 60.0}),
    })
    # Traces issued across a minute boundary: a batch opened in one minute holds the next one's.
    minute = int(time.time() * 1000) // 60_000 * 60_000
    windows: dict[tuple[str, str], bytes] = {}
    async with ColdStore(s3_settings) as cold:
        recorder = WindowRecorder(cold, st)
        try:
            for i in range(42):
                tenant = "acme" if i % 2 else "globex"
                # The last two come 5 minutes later in the same flush (as retries after an
                # outage do): a lookup lists only a trace's minute and the one before.
                trace = new_trace_id(minute - 1_000 + i * 50 + (300_000 if i >= 40 else 0))
                windows[(tenant, trace)] = _payload(trace, i)
                recorder.record(tenant, "s", trace, windows[(tenant, trace)])
            (tenant, trace), payload = next(iter(windows.items()))
            # Not flushed yet: in the recorder only.
            assert await load_window(cold, tenant, trace, recorder) == payload
            assert await cold.list_keys("windows/") == []
            with pytest.raises(WindowNotFoundError):
                await load_window(cold, tenant, trace)

            await recorder.drain()
            keys = await cold.list_keys("windows/")
            # One object per tenant and trace minute (three minutes here).
            assert len(keys) == 6 and {k.split("/")[1] for k in keys} == {"acme", "globex"}
            for (tenant, trace), payload in windows.items():
                assert await load_window(cold, tenant, trace) == payload  # byte for byte
                other = "globex" if tenant == "acme" else "acme"
                with pytest.raises(WindowNotFoundError):
                    await load_window(cold, other, trace)

            # A window stored on its own before batching is still found.
            legacy = uuid.uuid4().hex
            await cold.put_bytes(window_key("acme", legacy), _payload(legacy, 99))
            assert await load_window(cold, "acme", legacy) == _payload(legacy, 99)
        finally:
            await recorder.aclose()
