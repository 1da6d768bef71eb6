from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctxpipe.processors.exceptions import TokenCountError
from ctxpipe.processors.tokens import (
    AnthropicTokenCounter,
    LocalTokenCounter,
    TokenCounter,
    default_counter,
    truncate_to_tokens,
)

counter = LocalTokenCounter()


def test_is_a_token_counter() -> None:
    assert isinstance(counter, TokenCounter)


@pytest.mark.parametrize(
    ("text", "at_least"),
    [
        # (text, a generous guess of Claude's real count): the estimate must not be lower.
        ("The quick brown fox jumps over the lazy dog.", 10),
        ("    def foo(self, x: int) -> int:\n        return x * 2\n", 16),
        ('{"key": "value", "n": 12345, "ok": true}', 16),
        ("Invoice 2024-03-17: total 1,234.56 EUR", 14),
        ("internationalization considerations", 5),
        ("日本語のテキスト", 8),
        ("😀👍", 2),
    ],
)
def test_local_counter_over_counts(text: str, at_least: int) -> None:
    assert counter.count(text) >= at_least


def test_local_counter_basics() -> None:
    assert counter.count("") == 0
    assert counter.count("a") == 1
    assert counter.count("1234567890") == 10  # digits are charged one each
    assert counter.count("é") == 2  # UTF-8 bytes
    assert counter.count("word " * 100) >= 100


def _by_the_rules(text: str) -> int:
    """LocalTokenCounter's table, written out run by run (the counter does it with bytes
    methods): letter runs ceil(n / 4), whitespace runs ceil(n / 4) except a lone space (0),
    every other ASCII character 1, every non-ASCII character its UTF-8 length."""
    letters = re.findall(r"[A-Za-z]+", text)
    spaces = re.findall(r"[ \t\n\r\f\v]+", text)
    other_ascii = sum(1 for ch in text if ch.isascii()) - sum(map(len, letters)) - sum(map(len, spaces))
    non_ascii = sum(len(ch.encode("utf-8", "surrogatepass")) for ch in text if not ch.isascii())
    return (
        sum((len(r) + 3) // 4 for r in letters)
        + sum((len(r) + 3) // 4 for r in spaces if r != " ")
        + other_ascii
        + non_ascii
    )


# Texts made of what the rules tell apart: letters, whitespace (a lone space and runs),
# digits, punctuation, multi-byte characters and a lone surrogate.
_PIECES = st.text(alphabet="aZq \t\n\r\x0b\x0c09.,-_é€😀\ud800", max_size=80)


@given(st.one_of(st.text(), _PIECES))
def test_local_counter_follows_its_rules(text: str) -> None:
    assert counter.count(text) == _by_the_rules(text)


def test_local_counter_on_a_long_mixed_text() -> None:
    text = "Invoice INC-2041:  total 1,234.56 EUR\n\tpaid by Ünal 😀 " * 400
    assert counter.count(text) == _by_the_rules(text)


@given(st.text(), st.text())
def test_local_counter_subadditive(a: str, b: str) -> None:
    assert counter.count(a + b) <= counter.count(a) + counter.count(b) + 1


@given(st.text(min_size=1))
def test_local_counter_monotone_in_prefix(text: str) -> None:
    counts = [counter.count(text[:i]) for i in range(len(text) + 1)]
    assert counts == sorted(counts)


@given(st.text(), st.integers(min_value=0, max_value=50), st.booleans())
def test_truncate_fits_and_is_a_prefix_or_suffix(text: str, budget: int, from_end: bool) -> None:
    cut = truncate_to_tokens(text, budget, from_end=from_end)
    assert counter.count(cut) <= budget
    assert text.endswith(cut) if from_end else text.startswith(cut)


def test_truncate_prefers_word_and_line_boundaries() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta"
    cut = truncate_to_tokens(text, 7)
    assert text.startswith(cut)
    assert text[len(cut)] == " "  # ends between two words
    lines = "\n".join(f"line {i} of the log output" for i in range(50))
    tail = truncate_to_tokens(lines, 30, from_end=True)
    assert tail.startswith("line ")  # starts at a line
    assert truncate_to_tokens("short", 100) == "short"
    with pytest.raises(ValueError):
        truncate_to_tokens("x", -1)


# --- the API counter, against a local stand-in for the endpoint ------------------------


class _Handler(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body})
        payload: dict[str, Any]
        if type(self).status != 200:
            payload = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
        else:
            payload = {"input_tokens": 42}
        data = json.dumps(payload).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    _Handler.requests = []
    _Handler.status = 200
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_anthropic_counter_calls_count_tokens(api_url: str) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=api_url, api_key="test", max_retries=0)
    remote = AnthropicTokenCounter("claude-test-model", client=client)
    try:
        assert isinstance(remote, TokenCounter)
        assert remote.count("hello there") == 42
        assert remote.count("") == 0  # no request for nothing
    finally:
        client.close()
    assert len(_Handler.requests) == 1
    request = _Handler.requests[0]
    assert request["path"] == "/v1/messages/count_tokens"
    assert request["body"]["model"] == "claude-test-model"
    assert request["body"]["messages"] == [{"role": "user", "content": "hello there"}]


def test_anthropic_counter_wraps_errors(api_url: str) -> None:
    import anthropic

    _Handler.status = 400
    client = anthropic.Anthropic(base_url=api_url, api_key="test", max_retries=0)
    try:
        with pytest.raises(TokenCountError) as info:
            AnthropicTokenCounter("m", client=client).count("x")
    finally:
        client.close()
    assert info.value.retriable is False


def test_default_counter_is_local_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert isinstance(default_counter("claude-x"), LocalTokenCounter)
    assert isinstance(default_counter(), LocalTokenCounter)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
    assert isinstance(default_counter("claude-x"), AnthropicTokenCounter)
