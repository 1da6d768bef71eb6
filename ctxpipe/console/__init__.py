"""The web console: server-rendered pages over the API process's runtime (issue 18).

Mounted under ``/console`` on the API's own app (same port, same tenant keys) by
:func:`ctxpipe.console.routes.mount_console`. Nothing is loaded from a CDN: the one
stylesheet and one script are served from ``static/``.
"""

from ctxpipe.console.routes import mount_console

__all__ = ["mount_console"]
