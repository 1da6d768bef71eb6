"""``ctxpipe`` command line: serve, worker, publish, demo.

Errors a user can fix are printed as one line (``error: ...``) with exit code 1; a stack
trace means a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from typing import IO

import orjson
from pydantic import ValidationError

from ctxpipe.core.errors import CtxPipeError
from ctxpipe.app.logs import configure_logging
from ctxpipe.core.settings import get_settings


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
    from ctxpipe.streams.publisher import Publisher

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


_VERSION_COMMANDS = ("replay", "reproduce", "versions", "cleanup", "windows-backfill")


def _offsets(text: str | None) -> dict[int, int] | None:
    """``0:120,1:80`` -> {0: 120, 1: 80}."""
    if not text:
        return None
    try:
        return {int(p): int(o) for p, o in (part.split(":") for part in text.split(","))}
    except ValueError:
        raise CtxPipeError(f"positions must look like 0:120,1:80, got {text!r}") from None


def _add_version_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rp = sub.add_parser("replay", help="rebuild an index version from the topics (resumable)")
    rp.add_argument("version", help="the new version's name (run again to resume it)")
    rp.add_argument("--from-offsets", help="start per partition, e.g. 0:120,1:80 (default: the beginning)")
    rp.add_argument("--from-time", type=float, help="start at this time (epoch seconds)")
    rp.add_argument("--to-offsets", help="end per partition, exclusive (default: the end now)")
    rp.add_argument("--max-chunk-tokens", type=int)
    rp.add_argument("--overlap-tokens", type=int)
    rp.add_argument("--switch", action="store_true", help="make it the serving version when done")
    rr = sub.add_parser("reproduce", help="the window served under a trace id, byte for byte")
    rr.add_argument("trace_id")
    rr.add_argument("--tenant", required=True)
    rr.add_argument("--rebuild", action="store_true", help="replay into a scratch version and diff")
    vs = sub.add_parser("versions", help="list, switch or drop index versions")
    vs.add_argument("action", choices=["list", "switch", "drop"])
    vs.add_argument("name", nargs="?")
    sub.add_parser("cleanup", help="delete expired scratch versions and dropped versions")
    wb = sub.add_parser("windows-backfill", help="store windows the cold tier lacks, from the windows topic")
    wb.add_argument("--since-minutes", type=float, default=60.0, help="read the topic from this long ago")


async def _version_command(args: argparse.Namespace) -> None:
    from ctxpipe.storage.versions import VersionRegistry, describe

    settings = get_settings()
    if args.cmd == "replay":
        from ctxpipe.processors.chunking import ChunkingSettings
        from ctxpipe.streams.replay import Replayer

        overrides = {k: v for k, v in {"max_chunk_tokens": args.max_chunk_tokens,
                                        "overlap_tokens": args.overlap_tokens}.items() if v is not None}
        replayer = Replayer(settings, args.version, chunking=ChunkingSettings(**overrides),
                            progress=lambda p: print(p.line(), file=sys.stderr, flush=True))
        report = await replayer.run(
            from_offsets=_offsets(args.from_offsets), to_offsets=_offsets(args.to_offsets),
            from_timestamp_ms=None if args.from_time is None else int(args.from_time * 1000), switch=args.switch,
        )
        print(orjson.dumps({
            "version": report.version, "events": report.events, "from_archive": report.from_archive,
            "summaries": report.summaries, "seconds": round(report.seconds, 3),
            "events_per_s": round(report.events_per_s, 1), "resumed": report.resumed,
            "switched_from": report.switched_from}).decode())
    elif args.cmd == "reproduce":
        from ctxpipe.assembly.recording import load_window
        from ctxpipe.assembly.reproduce import rebuild
        from ctxpipe.storage.cold import ColdStore

        if args.rebuild:
            print((await rebuild(settings, args.tenant, args.trace_id)).text())
        else:
            async with ColdStore(settings.s3) as cold:
                sys.stdout.buffer.write(await load_window(cold, args.tenant, args.trace_id) + b"\n")
    elif args.cmd == "versions":
        async with VersionRegistry(settings) as registry:
            if args.action == "list":
                serving = await registry.serving()
                print(orjson.dumps({"serving": serving}).decode())
                for info in await registry.list():
                    print(orjson.dumps(describe(info, serving)).decode())
            elif not args.name:
                raise CtxPipeError(f"versions {args.action} needs a version name")
            elif args.action == "switch":
                print(f"serving {args.name} (was {await registry.switch(args.name)})")
            else:
                await registry.mark_dropped(args.name)
                print(f"dropped {args.name}: `ctxpipe cleanup` deletes its data after versions.dropped_grace_s")
    elif args.cmd == "windows-backfill":
        import time

        from ctxpipe.assembly.window_backfill import backfill_windows
        from ctxpipe.storage.cold import ColdStore

        async with ColdStore(settings.s3) as cold:
            result = await backfill_windows(settings, cold, int((time.time() - args.since_minutes * 60) * 1000))
        print(orjson.dumps({"seen": result.seen, "stored": result.stored}).decode())
    elif args.cmd == "cleanup":
        from ctxpipe.storage.retention import cleanup

        cleaned = await cleanup(settings)
        print(orjson.dumps({"removed": cleaned.removed, "redis_keys": cleaned.redis_keys}).decode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctxpipe", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run worker + API in one process (single-node mode)")
    serve.add_argument("--demo", action="store_true", help="publish demo events once up")
    sub.add_parser("worker", help="run the ingestion worker only (several form one consumer group)")
    sub.add_parser("api", help="run the API only (several behind a load balancer; CTX_QDRANT__MODE=server)")
    pub = sub.add_parser("publish", help="publish JSON lines from a file or stdin")
    pub.add_argument("path", nargs="?", default="-")
    pub.add_argument("--no-validate", action="store_true", help="send as-is (server validates)")
    sub.add_parser("demo", help="publish demo events to a running service and print the tiers")
    _add_version_commands(sub)
    args = parser.parse_args(argv)

    try:
        configure_logging(get_settings().log)
        if args.cmd == "publish":
            asyncio.run(_publish(args.path, validate=not args.no_validate))
        elif args.cmd == "serve":
            from ctxpipe.app.service import serve_forever

            serve_forever(get_settings(), demo=args.demo)
        elif args.cmd == "api":
            from ctxpipe.app.service import serve_forever

            serve_forever(get_settings(), worker=False)
        elif args.cmd == "worker":
            from ctxpipe.app.service import run_worker

            asyncio.run(run_worker(get_settings()))
        elif args.cmd == "demo":
            from ctxpipe.app.demo import run_demo

            asyncio.run(run_demo(get_settings()))
        elif args.cmd in _VERSION_COMMANDS:
            asyncio.run(_version_command(args))
    except CtxPipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        print(f"error: invalid event: {exc.errors(include_url=False)[0]['msg']}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
