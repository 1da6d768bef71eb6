"""The console's rendering, without a stack: view models, templates, escaping, access."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from ctxpipe.console.access import Viewer, tenant_of_key
from ctxpipe.console.exceptions import TenantForbidden
from ctxpipe.console.feeds import parse_dead_letter, parse_window
from ctxpipe.console.pipeline import CounterHistory, Sample, rate_chart
from ctxpipe.console.render import age, environment, payload_lines, system_blocks, window_view
from ctxpipe.core.settings import ApiSettings


def response(**over: Any) -> dict[str, Any]:
    item = {"event_id": "e1", "chunk_id": "c1", "scope": "chat:1", "kind": "message", "role": "user",
            "text": "<script>alert(1)</script> my order", "tokens": 9, "occurred_at": "2026-12-03T12:00:00+00:00",
            "age_seconds": 75.0, "score": 0.8123, "truncated": False, "metadata": {"channel": "web"}}
    doc: dict[str, Any] = {
        "trace_id": "01a23c0c798f740999ddffd7c060da34", "tenant": "acme", "scope": "chat:1",
        "budget_tokens": 1000, "used_tokens": 120, "counter": "local",
        "sections": [
            {"name": "pinned", "budget_tokens": 100, "used_tokens": 20, "tier": "hot", "freshness_class": "realtime",
             "staleness_bound_s": 0.5, "watermark": {"partition": 1, "offset": 7}, "items": []},
            {"name": "recent", "budget_tokens": 500, "used_tokens": 100, "tier": "hot",
             "freshness_class": "near_real_time", "staleness_bound_s": 2.0, "watermark": None, "items": [item]},
        ],
        "omitted": [{"event_id": "e0", "section": "recent", "reason": "over the section budget"}],
        "notes": [], "degraded": False, "degraded_reasons": [], "pending_writes": False,
        "freshness": {"required": None, "satisfied": True, "classes": {"pinned": "realtime", "recent": "near_real_time"},
                      "staleness_bounds_s": {"pinned": 0.5, "recent": 2.0}},
        "positions": {"topic": "t", "applied": {}, "scope_watermarks": {}, "wait_for": [], "pending_writes": False,
                      "waited_ms": 0.0},
        "prefix_sha256": "ab" * 32,
        "anthropic": {"system": [{"type": "text", "text": "You help."},
                                 {"type": "text", "text": "Pinned facts: X", "cache_control": {"type": "ephemeral"}}],
                      "messages": [{"role": "user", "content": [{"type": "text", "text": "my order"}]}]},
    }
    doc.update(over)
    return doc


def test_payload_lines_flag_exactly_the_cache_breakpoint() -> None:
    doc = response()
    lines = payload_lines(doc["anthropic"])
    marked = [line["text"] for line in lines if line["breakpoint"]]
    assert len(marked) == 1 and '"cache_control"' in marked[0]
    # The lines are the payload itself, indented: joined they parse back to the same object.
    assert orjson.loads("\n".join(line["text"] for line in lines)) == doc["anthropic"]
    cut = next(i for i, line in enumerate(lines) if line["breakpoint"])
    assert all(line["cached"] for line in lines[1:cut + 1]) and not any(line["cached"] for line in lines[cut + 1:])


def test_system_blocks_cached_up_to_the_breakpoint_and_no_breakpoint_without_cache_control() -> None:
    blocks = system_blocks(response()["anthropic"])
    assert [(b["cached"], b["breakpoint"]) for b in blocks] == [(True, False), (True, True)]
    plain = system_blocks({"system": [{"type": "text", "text": "x"}], "messages": []})
    assert plain == [{"text": "x", "cached": False, "breakpoint": False, "cache_control": None}]
    assert not any(line["breakpoint"] for line in payload_lines({"system": [], "messages": []}))


def test_window_view_keeps_budgets_items_and_omissions() -> None:
    view = window_view(response())
    recent = next(s for s in view["sections"] if s["name"] == "recent")
    assert (recent["budget_tokens"], recent["used_tokens"], recent["use_pct"]) == (500, 100, 20)
    assert recent["entries"][0]["tier"] == "hot" and recent["entries"][0]["score"] == 0.8123
    assert view["omitted"] == [{"event_id": "e0", "section": "recent", "reason": "over the section budget"}]


def test_trace_template_escapes_text_and_marks_the_breakpoint() -> None:
    doc = response()
    html = environment().get_template("try.html").render(
        viewer=Viewer(None), path="/console/try", form={"tenant": "acme", "scope": "chat:1", "query": "q",
                                                          "budget_tokens": "1000", "system_prompt": "", "scopes": "",
                                                          **{f"max_{n}": "" for n in ("pinned", "summary", "recent", "retrieved")}},
        sections=("pinned", "summary", "recent", "retrieved"), errors=[], window=window_view(doc), raw="{}")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count('id="cache-breakpoint"') == 1
    assert re.search(r'class="bpline">\s*&#34;cache_control&#34;', html)
    assert "over the section budget" in html and "0.8123" in html and "1.2 min" in html
    assert re.search(r'class="budget">500<', html) and re.search(r'class="used">100<', html)


def test_ages_read_as_people_say_them() -> None:
    assert [age(s) for s in (None, 3, 90, 7200, 172800)] == ["-", "3.0 s", "1.5 min", "2.0 h", "2.0 d"]


def test_a_key_names_its_tenant_only() -> None:
    api = ApiSettings(tenant_keys={"acme": SecretStr("k-a"), "globex": SecretStr("k-g")})
    assert tenant_of_key(api, "k-a") == "acme" and tenant_of_key(api, "k-g") == "globex"
    assert tenant_of_key(api, "k-x") is None and tenant_of_key(api, None) is None and tenant_of_key(api, "é") is None
    who = Viewer("acme")
    assert who.allows("acme") and not who.allows("globex") and Viewer(None).allows("globex")
    with pytest.raises(TenantForbidden):
        who.require("globex")


def test_windows_topic_records_parse_and_foreign_ones_are_refused() -> None:
    doc = {"trace_id": "t1", "recorded_at": 5.0, "request": {"tenant": "acme", "scope": "s", "query": "q" * 500},
           "response": response()}
    value = orjson.dumps(doc)
    w = parse_window(b"acme/s", value, 1000)
    assert w is not None and (w.tenant, w.items, w.omitted, len(w.query)) == ("acme", 1, 1, 160)
    assert parse_window(b"globex/s", value, 1000) is None  # key and recorded tenant disagree
    assert parse_window(b"acme/s", b"not json", 1000) is None


def test_dead_letters_carry_their_reason_and_tenant() -> None:
    headers = [("ctx-reason", b"tenant: field required"), ("ctx-stage", b"validate"),
               ("ctx-source-topic", b"ev"), ("ctx-source-partition", b"2"), ("ctx-source-offset", b"41")]
    d = parse_dead_letter(b"acme/s", b'{"tenant": "acme", "oops": 1}', headers, 0, 3, 1000)
    assert (d.reason, d.stage, d.source, d.tenant) == ("tenant: field required", "validate", "ev[2]@41", "acme")
    assert parse_dead_letter(None, b"\xff\xfe", [], 0, 4, 1000).tenant == ""


def test_rates_and_chart_from_counter_samples() -> None:
    history = CounterHistory(every_s=5)
    for i, total in enumerate((0, 50, 150)):
        history.samples.append(Sample(100.0 + 5 * i, {"in": total, "accepted": total, "dead_lettered": 0, "duplicates": 0}))
    rates = history.rates()
    assert rates["in"] == [(105.0, 10.0), (110.0, 20.0)]
    chart = rate_chart(rates, width=100, height=50)
    line = next(l for l in chart["lines"] if l["name"] == "in")
    assert line["points"] == "0.0,30.0 100.0,10.0" and chart["max"] == 20.0
    assert rate_chart({"in": []})["lines"] == [] and rate_chart({"in": [(1.0, 2.0)]})["lines"] == []
