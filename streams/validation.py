"""Turn raw Kafka bytes into a :class:`SourceEvent`, or a rejection that says why.

Never raises on bad input: the caller routes a :class:`Rejection` to the dead-letter topic
with the original bytes, so nothing is lost and the worker never stops.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson
from pydantic import ValidationError

from ctxpipe.core.events import MAX_EVENT_BYTES, SourceEvent

# orjson reads an integer beyond 64 bits as a float, silently. Such an integer has at
# least 19 digits (below -2**63): only then is the text parsed again with the standard library, which
# keeps it exact, so the contract can refuse it by name instead of storing a rounded float.
_LONG_INTEGER: Final = re.compile(rb"\d{19}")


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{where}: {err['msg']}")
    return "invalid event: " + "; ".join(parts)


def parse_event(raw: bytes | None) -> SourceEvent | Rejection:
    if raw is None:
        return Rejection("empty message (null value)")
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection(f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES} byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(f"not valid UTF-8 at byte {exc.start}")
    try:
        data: Any = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return Rejection(f"malformed JSON: {exc}")
    if _LONG_INTEGER.search(raw):
        try:
            data = json.loads(text)
        except RecursionError:
            return Rejection("malformed JSON: nested too deep")
    if not isinstance(data, dict):
        return Rejection(f"an event must be a JSON object, got {type(data).__name__}")
    try:
        return SourceEvent.model_validate(data)
    except ValidationError as exc:
        return Rejection(_describe(exc))
