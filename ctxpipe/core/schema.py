"""Write the public JSON Schema of the event contract: ``python -m ctxpipe.core.schema``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctxpipe.core.events import SourceEvent

SCHEMA_PATH = Path(__file__).with_name("event.schema.json")


def event_json_schema() -> dict[str, Any]:
    schema = SourceEvent.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://ctxpipe.dev/schemas/event.schema.json"
    schema["description"] = (
        "One JSON object per Kafka message on the source topic (default context.events), "
        "keyed by 'tenant/scope'. Rules that need more than one field (a message needs a role, "
        "a document a doc_id, a delete a doc_id or target_event_id, occurred_at a time zone) "
        "are enforced by the worker; failures go to the dead-letter topic with a reason."
    )
    return schema


def render() -> str:
    return json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
