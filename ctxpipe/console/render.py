"""Templates and the view models they render: pure functions of the API's JSON, so what a
page shows is what the API answered (tests/console/test_render.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from jinja2 import Environment

CACHE_MARK = "cache_control"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def when(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(float(epoch_s), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def payload_lines(anthropic: dict[str, Any]) -> list[dict[str, Any]]:
    """The Messages API payload as indented JSON lines; the line holding the prompt-cache
    breakpoint (``cache_control``) is flagged, and every line up to its block's end is part
    of the cached prefix."""
    lines = pretty(anthropic).splitlines()
    mark = next((i for i, line in enumerate(lines) if f'"{CACHE_MARK}"' in line), None)
    return [{"text": line, "breakpoint": i == mark, "cached": mark is not None and i <= mark and i > 0}
            for i, line in enumerate(lines)]


def system_blocks(anthropic: dict[str, Any]) -> list[dict[str, Any]]:
    """System blocks with whether each lies in the cached prefix (at or before the block
    carrying ``cache_control``) and which one is the breakpoint."""
    blocks = list(anthropic.get("system", []))
    last = max((i for i, b in enumerate(blocks) if CACHE_MARK in b), default=-1)
    return [{"text": b.get("text", ""), "cached": i <= last, "breakpoint": i == last,
             "cache_control": b.get(CACHE_MARK)} for i, b in enumerate(blocks)]


def window_view(response: dict[str, Any]) -> dict[str, Any]:
    """A served window (``POST /v1/context``'s JSON) as the trace page shows it."""
    sections = []
    for s in response["sections"]:
        items = [
            {**item, "metadata_json": pretty(item.get("metadata", {})), "tier": s["tier"]}
            for item in s["items"]
        ]
        sections.append({
            "name": s["name"], "tier": s["tier"], "budget_tokens": s["budget_tokens"],
            "used_tokens": s["used_tokens"],
            "use_pct": round(100 * s["used_tokens"] / s["budget_tokens"]) if s["budget_tokens"] else 0,
            "freshness_class": s["freshness_class"], "staleness_bound_s": s["staleness_bound_s"],
            "watermark": s["watermark"], "entries": items,
        })
    return {
        "trace_id": response["trace_id"], "tenant": response["tenant"], "scope": response["scope"],
        "budget_tokens": response["budget_tokens"], "used_tokens": response["used_tokens"],
        "counter": response["counter"], "sections": sections, "omitted": response["omitted"],
        "notes": response["notes"], "degraded": response["degraded"],
        "degraded_reasons": response["degraded_reasons"], "pending_writes": response["pending_writes"],
        "freshness": response["freshness"], "positions": response["positions"],
        "prefix_sha256": response["prefix_sha256"],
        "system_blocks": system_blocks(response["anthropic"]),
        "messages": response["anthropic"]["messages"],
        "payload_lines": payload_lines(response["anthropic"]),
    }


def environment() -> Environment:
    # Imported here: jinja2 costs ~90 ms of start-up, paid at the first page instead.
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(files("ctxpipe.console") / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(age=age, when=when, pretty=pretty)
    env.globals["now"] = time.time
    return env
