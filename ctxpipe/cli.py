"""``ctxpipe`` command line: serve, worker, publish, demo.

Errors a user can fix are printed as one line (``error: ...``) with exit code 1; a stack
trace means a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterator
from typing import IO

import orjson
from pydantic import ValidationError

from ctxpipe.errors import CtxPipeError
from ctxpipe.settings import get_settings


def _read_json_lines(stream: IO[str]) -> Iterator[dict[str, object]]:
    for n, line in enumerate(stream, 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CtxPipeError(f"line {n}: malformed JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise CtxPipeError(f"line {n}: an event must be a JSON object")
        yield obj


async def _publish(path: str, validate: bool) -> None:
    from streams.publisher import Publisher

    settings = get_settings()
    src = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    try:
        events = list(_read_json_lines(src))
    finally:
        if src is not sys.stdin:
            src.close()
    async with Publisher(settings.kafka, validate=validate) as pub:
        positions = await pub.publish(events)
    for ev, pos in zip(events, positions, strict=True):
        print(orjson.dumps({"event_id": ev.get("event_id"), **pos.model_dump()}).decode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctxpipe", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run worker + API in one process (single-node mode)")
    serve.add_argument("--demo", action="store_true", help="publish demo events once up")
    sub.add_parser("worker", help="run the ingestion worker only")
    pub = sub.add_parser("publish", help="publish JSON lines from a file or stdin")
    pub.add_argument("path", nargs="?", default="-")
    pub.add_argument("--no-validate", action="store_true", help="send as-is (server validates)")
    sub.add_parser("demo", help="publish demo events to a running service and print the tiers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        if args.cmd == "publish":
            asyncio.run(_publish(args.path, validate=not args.no_validate))
        elif args.cmd == "serve":
            from ctxpipe.service import serve_forever

            serve_forever(get_settings(), demo=args.demo)
        elif args.cmd == "worker":
            from ctxpipe.service import run_worker

            asyncio.run(run_worker(get_settings()))
        elif args.cmd == "demo":
            from ctxpipe.demo import run_demo

            asyncio.run(run_demo(get_settings()))
    except CtxPipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        print(f"error: invalid event: {exc.errors(include_url=False)[0]['msg']}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
