"""Process logging: ctxpipe's own lines at ``log.level``, libraries at ``log.library_level``.

Text for a terminal (``HH:MM:SS level logger: message``), JSON lines for log collectors.
Called once by the CLI; a program that embeds ctxpipe configures logging itself.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Final

import orjson

from ctxpipe.core.settings import LogSettings

# Every module of ours logs under "ctxpipe."; every other logger is a library's.
OWN_PACKAGES: Final = ("ctxpipe",)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.library_level)
    for name in OWN_PACKAGES:
        logging.getLogger(name).setLevel(settings.level)
    # uvicorn configures its own loggers when it starts; ctxpipe.app.service passes it
    # log_config=None so these levels and this handler stay in force.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # A uvicorn started earlier in the process with its own log config left handlers
        # here that bypass ours: every line goes through the root handler instead.
        uv = logging.getLogger(name)
        for old in list(uv.handlers):
            uv.removeHandler(old)
        uv.propagate = True
        uv.setLevel(settings.library_level)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if settings.access_log else logging.WARNING)
