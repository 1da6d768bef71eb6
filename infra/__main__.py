"""``python -m ctxpipe.infra up|down|status|restart``: the local stack from the shell.

Errors print one line, ``error: <what is wrong and what to do>``, and exit 1.
"""

from __future__ import annotations

import argparse
import sys
import time

from pydantic import ValidationError

from ctxpipe.core.errors import CtxPipeError
from ctxpipe.core.settings import Settings
from ctxpipe.infra.stack import SERVICES, Stack


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctxpipe.infra", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd, text in (("up", "start what is not running"), ("down", "stop what we started"),
                      ("status", "one line per service")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("--only", default=",".join(SERVICES),
                       help=f"comma-separated subset of {','.join(SERVICES)}")
    p = sub.add_parser("restart", help="stop and start one service")
    p.add_argument("service", choices=SERVICES)
    return parser


def _only(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    stack = Stack(Settings(), notify=lambda msg: print(f"stack: {msg}", flush=True))
    t0 = time.monotonic()
    if args.cmd == "up":
        started = stack.up(_only(args.only))
        running = ", ".join(stack.pids())
        how = f"started in {time.monotonic() - t0:.1f}s" if started else "already running"
        print(f"stack: {running} up on 127.0.0.1 ({how}; data and logs in {stack.home}/)")
    elif args.cmd == "down":
        stopped = stack.down(_only(args.only))
        print(f"stopped: {', '.join(sorted(stopped)) or 'nothing'}")
    elif args.cmd == "status":
        wanted = set(_only(args.only))
        for st in stack.status():
            if st.name in wanted:
                print(st.line())
    else:
        stack.restart(args.service)
        print(f"{args.service}: restarted (pid {stack.pid(args.service)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except CtxPipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        print(f"error: invalid CTX_* setting {where}: {first['msg']}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted; run `python -m ctxpipe.infra status` to see what is running",
              file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
