"""A fake Anthropic Messages API on loopback, for the real ``anthropic`` client.

A threaded stdlib HTTP server bound to 127.0.0.1 port 0 (never a fixed port). It speaks
``POST /v1/messages`` and answers from a script: each request takes the next scripted
:class:`Reply`; when the script is empty it uses ``default`` (a normal answer unless a test
changes it, e.g. to "always 529" for an API that is down). It records every request and
the highest number of requests it held at once (to check concurrency limits).

The normal answer is deterministic: a summary made of the fact-like tokens (ids, amounts,
dates, capitalised names) of the previous summary and the new turns, in order of first
appearance, so tests can check that facts survive the Claude path.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

ReplyKind = Literal["ok", "error", "raw"]

_FACT = re.compile(
    r"\b[A-Z]{2,}-\d+\b"  # ids: AC-1042
    r"|\$\d[\d,]*(?:\.\d+)?"  # money
    r"|\b\d{4}-\d{2}-\d{2}\b"  # ISO dates
    r"|\b[A-Z][a-z]{2,}(?: [A-Z][a-z]{2,})*\b"  # capitalised words (names, mostly)
)
_NOT_FACTS = frozenset({"The", "This", "That", "What", "When", "Write", "Facts", "User", "Assistant"})
_MAX_FACTS = 200


def fake_summary(user_message: str) -> str:
    """The deterministic "model" output for a summarization request."""
    seen: dict[str, None] = {}
    for m in _FACT.finditer(user_message):
        tok = m.group(0)
        if tok not in _NOT_FACTS:
            seen.setdefault(tok, None)
    facts = list(seen)[:_MAX_FACTS]
    return "Facts: " + "; ".join(facts) if facts else "Nothing of note."


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer. Build with the class methods."""

    kind: ReplyKind = "ok"
    status: int = 200
    text: str | None = None  # "ok": the summary text (None: :func:`fake_summary`)
    error_type: str = "api_error"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""  # "raw": the exact body sent
    delay_s: float = 0.0  # wait before answering (a slow or hung API)
    usage: tuple[int, int] | None = None  # (input, output) tokens; None: estimated

    @classmethod
    def ok(cls, text: str | None = None, *, delay_s: float = 0.0, usage: tuple[int, int] | None = None) -> Reply:
        return cls("ok", text=text, delay_s=delay_s, usage=usage)

    @classmethod
    def error(
        cls, status: int, error_type: str = "api_error", *, retry_after: str | None = None, delay_s: float = 0.0
    ) -> Reply:
        headers = (("retry-after", retry_after),) if retry_after is not None else ()
        return cls("error", status=status, error_type=error_type, headers=headers, delay_s=delay_s)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Reply:
        return cls.error(429, "rate_limit_error", retry_after=retry_after)

    @classmethod
    def overloaded(cls) -> Reply:
        return cls.error(529, "overloaded_error")

    @classmethod
    def server_error(cls) -> Reply:
        return cls.error(500, "api_error")

    @classmethod
    def slow(cls, delay_s: float) -> Reply:
        return cls.ok(delay_s=delay_s)

    @classmethod
    def malformed(cls) -> Reply:
        """200 with a body that is not JSON."""
        return cls("raw", body=b'{"id": "msg_broken", "content": [{"type": "te')

    @classmethod
    def no_content(cls) -> Reply:
        """200 with valid JSON missing the ``content`` field."""
        msg: dict[str, Any] = {"id": "msg_nocontent", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
               "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 10, "output_tokens": 0}}
        return cls("raw", body=json.dumps(msg).encode())

    @classmethod
    def empty_content(cls) -> Reply:
        """200 with ``content: []`` (no text block)."""
        msg: dict[str, Any] = {"id": "msg_empty", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
               "content": [], "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 10, "output_tokens": 0}}
        return cls("raw", body=json.dumps(msg).encode())


@dataclass(slots=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    at: float = field(default_factory=time.monotonic)

    @property
    def user_text(self) -> str:
        if not self.body:
            return ""
        parts: list[str] = []
        for msg in self.body.get("messages", []):
            content = msg.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [b.get("text", "") for b in content if isinstance(b, dict)]
        return "\n".join(parts)


class FakeAnthropicServer:
    def __init__(self, model: str = "claude-haiku-4-5-20251001") -> None:
        self.model = model
        self.default: Reply = Reply.ok()
        self.requests: list[RecordedRequest] = []
        self.max_concurrent = 0
        self._in_flight = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._counter = 0
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        # Short poll interval: stop() waits up to one interval.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-anthropic", daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeAnthropicServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()  # wakes handlers sleeping in a slow reply
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeAnthropicServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting ---------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == "/v1/messages"]

    def _next(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _enter(self, rec: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(rec)
            self._in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self._in_flight)
            self._counter += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _message(self, rec: RecordedRequest, reply: Reply) -> dict[str, Any]:
        text = reply.text if reply.text is not None else fake_summary(rec.user_text)
        if reply.usage is not None:
            usage_in, usage_out = reply.usage
        else:
            system = rec.body.get("system", "") if rec.body else ""
            usage_in = (len(rec.user_text) + len(str(system))) // 4 + 1
            usage_out = len(text) // 4 + 1
        with self._lock:
            n = self._counter
        return {
            "id": f"msg_fake_{n:06d}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": usage_in, "output_tokens": usage_out},
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a hung "slow" handler must not block stop()
    fake: FakeAnthropicServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The client gave up (timeout test) and closed the socket: expected, stay quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = RecordedRequest(self.path.split("?")[0], {k.lower(): v for k, v in self.headers.items()}, body)
        fake._enter(rec)
        try:
            if rec.path != "/v1/messages":
                self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": rec.path}})
                return
            reply = fake._next()
            if reply.delay_s and fake._closing.wait(reply.delay_s):
                return
            if reply.kind == "ok":
                self._send(200, fake._message(rec, reply))
            elif reply.kind == "error":
                payload = {"type": "error", "error": {"type": reply.error_type, "message": f"fake {reply.status}"}}
                self._send(reply.status, payload, reply.headers)
            else:
                self._send_bytes(200, reply.body, reply.headers)
        finally:
            fake._leave()

    def _send(self, status: int, payload: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), headers)

    def _send_bytes(self, status: int, data: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", "req_fake")
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released): "the API is down"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
