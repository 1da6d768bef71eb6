"""The console's pages, mounted on the API's app under ``/console``.

Every page takes the :class:`~ctxpipe.console.access.Viewer` dependency: with tenant keys
configured it is the key's tenant, and every read below is filtered to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, quote

import orjson
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from ctxpipe.assembly.exceptions import (
    BudgetTooSmallError, ReproduceError, WindowLogUnavailableError, WindowNotFoundError,
)
from ctxpipe.assembly.models import SCOPE_PATTERN, SECTION_ORDER, TENANT_PATTERN, TRACE_ID_PATTERN, ContextRequest
from ctxpipe.assembly.recording import load_window
from ctxpipe.assembly.reproduce import rebuild
from ctxpipe.assembly.service import AssemblyService
from ctxpipe.console import pipeline as pipe
from ctxpipe.console.access import COOKIE, Viewer, tenant_of_key, viewer
from ctxpipe.console.exceptions import LoginRequired, TenantForbidden
from ctxpipe.console.feeds import DeadLetter, WindowSummary, dead_letters_tail, windows_tail
from ctxpipe.console.render import environment, pretty, window_view
from ctxpipe.core.errors import CtxPipeError
from ctxpipe.core.events import MAX_ID_CHARS
from ctxpipe.core.settings import Settings
from ctxpipe.storage.exceptions import StorageError
from ctxpipe.storage.versions import VersionRegistry
from ctxpipe.streams.summaries import SummaryStore

if TYPE_CHECKING:
    from jinja2 import Environment

PREFIX: Final = "/console"
# Windows and dead letters kept in memory for the lists (summaries only).
WINDOWS_KEPT: Final = 2000
DEAD_LETTERS_KEPT: Final = 200
_FORM_MAX_BYTES: Final = 256 * 1024
LOG_ENDS_TIMEOUT_S: Final = 3.0
# Pages run only their own script and stylesheet, are never framed, and are not cached
# (they hold a tenant's data). Inline style attributes draw the budget meters.
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}
# A rebuild replays the tenant's records from the source topic: long for a large tenant.
REBUILD_TIMEOUT_S: Final = 600.0


class Console:
    """What the pages keep between requests: topic tails, the counter history, one
    consumer for log ends, and the templates."""

    def __init__(self, settings: Settings) -> None:
        ks = settings.kafka
        self.windows = windows_tail(ks.bootstrap_servers, ks.windows_topic, WINDOWS_KEPT)
        self.dead_letters = dead_letters_tail(ks.bootstrap_servers, ks.dlq_topic, DEAD_LETTERS_KEPT)
        self.history = pipe.CounterHistory()
        self.ends = pipe.LogEnds(ks.bootstrap_servers)
        self._env: Environment | None = None
        # A rebuild replays the tenant's records into a scratch version: one at a time.
        self.rebuild_lock = asyncio.Lock()

    @property
    def env(self) -> Environment:
        if self._env is None:
            self._env = environment()
        return self._env

    def start(self) -> None:
        self.windows.start()
        self.dead_letters.start()
        self.history.start()

    async def aclose(self) -> None:
        await self.windows.aclose()
        await self.dead_letters.aclose()
        await self.history.aclose()
        await self.ends.aclose()


router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _page(request: Request, template: str, who: Viewer, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _console(request).env.get_template(template).render(viewer=who, path=request.url.path, **context)
    return HTMLResponse(html, status_code=status_code, headers=_SECURITY_HEADERS)


def _error(request: Request, who: Viewer, status_code: int, message: str) -> HTMLResponse:
    return _page(request, "error.html", who, status_code=status_code, status=status_code, message=message)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (no multipart dependency: the console's forms are small)."""
    body = await request.body()
    if len(body) > _FORM_MAX_BYTES:
        return {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=50)
    return {k: v[-1] for k, v in parsed.items()}


def _valid_tenant(tenant: str) -> bool:
    import re

    return bool(tenant) and len(tenant) <= MAX_ID_CHARS and re.match(TENANT_PATTERN, tenant) is not None


# -- login ------------------------------------------------------------------------------

@router.get("/login")
async def login_page(request: Request, next: str = PREFIX + "/windows") -> HTMLResponse:
    return _page(request, "login.html", Viewer(None), next=_safe_next(next), failed=False)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    target = _safe_next(form.get("next", ""))
    tenant = tenant_of_key(request.app.state.settings.api, form.get("key"))
    if tenant is None:
        return _page(request, "login.html", Viewer(None), status_code=403, next=target, failed=True)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, form["key"], httponly=True, samesite="strict", path=PREFIX,
                        secure=request.url.scheme == "https")
    return response


@router.get("/logout")
async def logout() -> Response:
    response = RedirectResponse(PREFIX + "/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


def _safe_next(target: str) -> str:
    # Only a path of this console: never an open redirect to another site.
    return target if target.startswith(PREFIX + "/") and not target.startswith("//") else PREFIX + "/windows"


# -- windows ----------------------------------------------------------------------------

@router.get("")
@router.get("/")
async def home() -> Response:
    return RedirectResponse(PREFIX + "/windows", status_code=307)


def _tri(value: str) -> bool | None:
    return {"yes": True, "no": False}.get(value)


@router.get("/windows")
async def windows(
    request: Request, who: Viewer = Depends(viewer), tenant: str = "", scope: str = "",
    degraded: str = "", pending: str = "", limit: int = Query(default=100, ge=1, le=1000),
) -> HTMLResponse:
    want_degraded, want_pending = _tri(degraded), _tri(pending)
    if who.tenant is not None:
        tenant = who.tenant

    def keep(w: WindowSummary) -> bool:
        return (who.allows(w.tenant) and (not tenant or w.tenant == tenant) and (not scope or w.scope == scope)
                and (want_degraded is None or w.degraded == want_degraded)
                and (want_pending is None or w.pending_writes == want_pending))

    feed = _console(request).windows
    rows = feed.newest(limit, keep)
    return _page(request, "windows.html", who, rows=rows, feed_error=feed.error,
                 filters={"tenant": tenant, "scope": scope, "degraded": degraded, "pending": pending, "limit": limit})




@router.get("/windows/{tenant}/{trace_id}")
async def trace(
    request: Request, tenant: str, trace_id: str = Path(pattern=TRACE_ID_PATTERN), who: Viewer = Depends(viewer),
) -> HTMLResponse:
    if not _valid_tenant(tenant):
        return _error(request, who, 422, "not a tenant name")
    who.require(tenant)
    assembly: AssemblyService = request.app.state.assembly
    try:
        raw = await load_window(request.app.state.runtime.cold, tenant, trace_id.lower(), assembly.recorder,
                                assembly.window_log)
    except WindowNotFoundError as exc:
        return _error(request, who, 404, str(exc))
    except (StorageError, WindowLogUnavailableError) as exc:
        return _error(request, who, 503, f"the window cannot be read now: {exc}")
    doc = orjson.loads(raw)
    return _page(request, "trace.html", who, doc=doc, window=window_view(doc["response"]),
                 request_json=pretty(doc["request"]), versions_json=pretty(doc.get("versions", {})),
                 response_json=pretty(doc["response"]))


@router.post("/windows/{tenant}/{trace_id}/rebuild")
async def rebuild_window(
    request: Request, tenant: str, trace_id: str = Path(pattern=TRACE_ID_PATTERN), who: Viewer = Depends(viewer),
) -> JSONResponse:
    """Reproduce-with-rebuild (``ctxpipe reproduce --rebuild``): replay the tenant's records
    up to the window's positions into a scratch version, assemble again, diff."""
    if not _valid_tenant(tenant):
        return JSONResponse({"detail": "not a tenant name"}, status_code=422)
    who.require(tenant)
    runtime = request.app.state.runtime
    assembly: AssemblyService = request.app.state.assembly
    await assembly.recorder.drain()  # the rebuild reads the window from the cold tier
    console = _console(request)
    try:
        async with console.rebuild_lock, asyncio.timeout(REBUILD_TIMEOUT_S):
            result = await rebuild(runtime.settings, tenant, trace_id.lower(), model=runtime.embedder.inner)
    except TimeoutError:
        return JSONResponse({"detail": f"the rebuild took over {REBUILD_TIMEOUT_S:g} s: run "
                             f"`ctxpipe reproduce {trace_id} --tenant {tenant} --rebuild` instead"}, status_code=504)
    except WindowNotFoundError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=404)
    except (ReproduceError, StorageError, KafkaError) as exc:
        return JSONResponse({"detail": f"rebuild failed: {exc}"}, status_code=503)
    return JSONResponse({
        "trace_id": result.trace_id, "identical": result.identical, "changes": result.changes,
        "causes": result.causes, "scratch_version": result.scratch_version, "text": result.text(),
    })


# -- pipeline ---------------------------------------------------------------------------

@router.get("/pipeline")
async def pipeline_page(request: Request, who: Viewer = Depends(viewer)) -> HTMLResponse:
    runtime = request.app.state.runtime
    console = _console(request)
    settings: Settings = runtime.settings
    topic = settings.kafka.source_topic

    async def positions() -> tuple[list[dict[str, int]], str | None]:
        try:
            # A broker down must not hold the page for the client's 40 s request timeout.
            async with asyncio.timeout(LOG_ENDS_TIMEOUT_S):
                ends = await console.ends.ends(topic, settings.kafka.partitions)
            return await pipe.partitions(ends, runtime.hot, topic), None
        except TimeoutError:
            return [], f"Kafka did not answer within {LOG_ENDS_TIMEOUT_S:g} s"
        except (KafkaError, CtxPipeError, OSError) as exc:
            return [], f"{type(exc).__name__}: {exc}"

    async def versions() -> tuple[dict[str, Any], str | None]:
        try:
            async with VersionRegistry(settings, runtime.hot.client) as registry:
                return await pipe.versions(registry, who.tenant), None
        except CtxPipeError as exc:
            return {"serving": getattr(runtime, "version", "?"), "versions": []}, str(exc)

    (parts, parts_error), health, (vers, vers_error) = await asyncio.gather(positions(), runtime.health(), versions())

    def mine(d: DeadLetter) -> bool:
        return who.tenant is None or d.tenant == who.tenant

    return _page(
        request, "pipeline.html", who, topic=topic, partitions=parts, partitions_error=parts_error,
        counters=pipe.counters_now(), chart=pipe.rate_chart(console.history.rates()),
        history_every_s=console.history.every_s, dead_letters=console.dead_letters.newest(20, mine),
        dlq_topic=settings.kafka.dlq_topic, dlq_error=console.dead_letters.error,
        summarizer=pipe.summarizer_state(getattr(runtime, "summaries", None)), health=health,
        versions=vers, versions_error=vers_error, worker_here=getattr(runtime, "progress", None) is not None,
    )


# -- scopes -----------------------------------------------------------------------------

@router.get("/scopes")
async def scopes(request: Request, who: Viewer = Depends(viewer), tenant: str = "") -> HTMLResponse:
    if who.tenant is not None:
        tenant = who.tenant
    found: list[str] = []
    complete = True
    error = None
    if tenant:
        if not _valid_tenant(tenant):
            return _error(request, who, 422, "not a tenant name")
        try:
            found, complete = await request.app.state.runtime.hot.scopes(tenant, limit=500)
        except StorageError as exc:
            error = str(exc)
    return _page(request, "scopes.html", who, tenant=tenant, scopes=found, complete=complete, error=error)


@router.get("/scopes/{tenant}/{scope}")
async def scope_page(request: Request, tenant: str, scope: str, who: Viewer = Depends(viewer),
                     limit: int = Query(default=50, ge=1, le=1000)) -> HTMLResponse:
    import re

    if not _valid_tenant(tenant) or len(scope) > MAX_ID_CHARS or not re.match(SCOPE_PATTERN, scope):
        return _error(request, who, 422, "not a tenant or scope name")
    who.require(tenant)
    runtime = request.app.state.runtime
    store = SummaryStore(runtime.hot, runtime.cold)
    try:
        view, current, earlier, ttl = await asyncio.gather(
            runtime.scope_view(tenant, scope, limit=limit), store.latest(tenant, scope),
            store.versions(tenant, scope), runtime.hot.ttl(tenant, scope))
    except StorageError as exc:
        return _error(request, who, 503, f"a tier cannot be read now: {exc}")
    return _page(request, "scope.html", who, tenant=tenant, scope=scope, view=view, ttl=ttl,
                 summary=None if current is None else current.model_dump(mode="json"),
                 earlier=[s.model_dump(mode="json") for s in earlier if current is None or s.summary_id != current.summary_id],
                 limit=limit)


# -- try --------------------------------------------------------------------------------

_TRY_DEFAULTS: Final = {"tenant": "", "scope": "", "query": "", "budget_tokens": "2000", "system_prompt": "", "scopes": "",
                        **{f"max_{name}": "" for name in SECTION_ORDER}}


@router.get("/try")
async def try_page(request: Request, who: Viewer = Depends(viewer), tenant: str = "", scope: str = "") -> HTMLResponse:
    form = {**_TRY_DEFAULTS, "tenant": who.tenant or tenant, "scope": scope}
    return _page(request, "try.html", who, form=form, sections=SECTION_ORDER, errors=[], window=None, raw=None)


@router.post("/try")
async def try_submit(request: Request, who: Viewer = Depends(viewer)) -> HTMLResponse:
    form = {**_TRY_DEFAULTS, **{k: v for k, v in (await _form(request)).items() if k in _TRY_DEFAULTS}}
    if who.tenant is not None:
        form["tenant"] = who.tenant

    def again(status: int, errors: list[str]) -> HTMLResponse:
        return _page(request, "try.html", who, status_code=status, form=form, sections=SECTION_ORDER,
                     errors=errors, window=None, raw=None)

    try:
        body: dict[str, Any] = {"tenant": form["tenant"], "scope": form["scope"], "query": form["query"],
                                "budget_tokens": int(form["budget_tokens"] or 0)}
        caps = {name: {"max_tokens": int(form[f"max_{name}"])} for name in SECTION_ORDER if form[f"max_{name}"].strip()}
    except ValueError:
        return again(422, ["budget and section caps must be whole numbers"])
    if caps:
        body["sections"] = caps
    if more := form["scopes"].replace(",", " ").split():
        body["scopes"] = more
    if form["system_prompt"].strip():
        body["system_prompt"] = form["system_prompt"]
    try:
        req = ContextRequest.model_validate(body)
    except ValidationError as exc:
        return again(422, [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()])
    who.require(req.tenant)
    assembly: AssemblyService = request.app.state.assembly
    try:
        raw = await assembly.assemble_json(req)
    except BudgetTooSmallError as exc:
        return again(422, [str(exc)])
    doc = orjson.loads(raw)
    return _page(request, "try.html", who, form=form, sections=SECTION_ORDER, errors=[],
                 window=window_view(doc), raw=pretty(doc))


# -- mounting ---------------------------------------------------------------------------

async def _login_required(request: Request, exc: Exception) -> Response:
    if request.method == "GET":
        target = quote(str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""), safe="/")  # one query value: ?, = and & escaped
        return RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)
    return JSONResponse({"detail": str(exc)}, status_code=401)


async def _forbidden(request: Request, exc: Exception) -> Response:
    console: Console | None = getattr(request.app.state, "console", None)
    if request.method != "GET" or console is None:
        return JSONResponse({"detail": str(exc)}, status_code=403)
    return _error(request, viewer(request), 403, str(exc))


def mount_console(api: FastAPI) -> None:
    """Add the console to the API's app: its routes, its static files, and its background
    feeds, started and stopped with the app (inside the app's own lifespan, so the runtime
    and the assembly service are there)."""
    api.include_router(router)
    api.mount(PREFIX + "/static", StaticFiles(directory=str(files("ctxpipe.console") / "static")),
              name="console-static")
    api.add_exception_handler(LoginRequired, _login_required)
    api.add_exception_handler(TenantForbidden, _forbidden)
    inner = api.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with inner(app) as state:
            console = Console(app.state.settings)
            console.start()
            app.state.console = console
            try:
                yield state
            finally:
                await console.aclose()

    api.router.lifespan_context = lifespan
