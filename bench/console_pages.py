"""Response time of each console page on a stack holding the quality bench's data.

    python bench/console_pages.py                  # 8 users (the quality bench's default)
    python bench/console_pages.py --users 2 --hash-embedder   # smaller and quicker

The quality bench's conversations (:mod:`bench.quality_data`, seed 202) go through the
production ingest code as in ``bench/assembly_quality.py``; then every question is asked
once through ``POST /v1/context`` (windows recorded, so the windows list and trace pages
have data), the recorder is drained, and each page is fetched ``--repeat`` times over HTTP
from the API served by uvicorn on a free port (the console mounted as ``ctxpipe serve``
does). Prints ms per page (median, p95, max) and the data size. The issue's target: under
200 ms per page. Cleans up its Redis keys, topics and bucket at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

import httpx
import uvicorn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from assembly_quality import ingest  # noqa: E402
from benchkit import isolated_settings, remove_run  # noqa: E402
from bench.quality_data import make_dataset  # noqa: E402
from ctxpipe.app.runtime import open_runtime  # noqa: E402
from ctxpipe.assembly.api import create_api  # noqa: E402
from ctxpipe.console import mount_console  # noqa: E402
from ctxpipe.core.settings import Settings  # noqa: E402
from ctxpipe.infra.stack import Stack  # noqa: E402
from ctxpipe.infra.testing import free_port  # noqa: E402
from ctxpipe.processors.embedding import HashEmbedder  # noqa: E402


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--seed", type=int, default=202)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--hash-embedder", action="store_true", help="skip the real model (faster ingest)")
    ap.add_argument("--screenshots", type=Path, default=None,
                    help="also save headless-Chromium screenshots of the pages here (docs/console)")
    args = ap.parse_args()

    Stack(Settings()).up()
    ds = make_dataset(args.seed, users=args.users)
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        settings = isolated_settings(Settings(), run, Path(tmp) / "edge", prefix="cbench")
        try:
            await _bench(settings, ds, args)
        finally:
            await remove_run(settings, run)


async def _bench(settings: Settings, ds: object, args: argparse.Namespace) -> None:
    from bench.quality_data import Dataset

    assert isinstance(ds, Dataset)
    model = HashEmbedder() if args.hash_embedder else None
    async with open_runtime(settings, worker=False, model=model) as rt:
        took = await ingest(rt, ds)
        api = create_api(lambda: nullcontext(rt))
        mount_console(api)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_config=None, access_log=False))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                traces = []
                for q in ds.questions:
                    r = await http.post("/v1/context", json={
                        "tenant": ds.tenant, "scope": q.scope, "query": q.query, "budget_tokens": args.budget,
                        "scopes": list(q.scopes)})
                    r.raise_for_status()
                    traces.append(r.json()["trace_id"])
                await api.state.assembly.drain()  # every window in the cold tier
                console = api.state.console
                await asyncio.wait_for(console.windows.caught_up.wait(), 30)
                deadline = time.monotonic() + 30
                while len(console.windows.newest(10_000)) < len(traces) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                scopes = sorted({t.scope for t in ds.turns})
                pages = {
                    "windows": "/console/windows",
                    "trace": f"/console/windows/{ds.tenant}/{traces[len(traces) // 2]}",
                    "pipeline": "/console/pipeline",
                    "scopes": f"/console/scopes?tenant={ds.tenant}",
                    "scope": f"/console/scopes/{ds.tenant}/{ds.questions[0].scope}",
                    "try (form)": "/console/try",
                }
                print(f"data: {len(ds.turns)} turns in {len(scopes)} scopes of tenant {ds.tenant} "
                      f"({args.users} users, seed {args.seed}; ingest {took:.1f}s, "
                      f"{'hash' if model else 'real'} embedder); {len(traces)} windows served and recorded; "
                      f"windows list holds {len(console.windows.newest(10_000))}")
                print(f"{'page':<12} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'bytes':>8}")
                for name, path in pages.items():
                    await _time(http, name, "GET", path, args.repeat)
                q = ds.questions[0]
                await _time(http, "try (POST)", "POST", "/console/try", args.repeat, data={
                    "tenant": ds.tenant, "scope": q.scope, "query": q.query, "budget_tokens": str(args.budget),
                    "scopes": " ".join(q.scopes)})
                if args.screenshots is not None:
                    # Driven from a thread: this loop serves the pages the browser loads.
                    await asyncio.to_thread(_screenshots, f"http://127.0.0.1:{port}", pages, args.screenshots,
                                            {"scope": q.scope, "query": q.query, "budget": str(args.budget),
                                             "scopes": " ".join(q.scopes)})
        finally:
            server.should_exit = True
            await task


def _screenshots(base: str, pages: dict[str, str], folder: Path, ask: dict[str, str]) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from ctxpipe.infra.packages import ensure_browser

    chromium, chromedriver = ensure_browser()
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=chromedriver))
    folder.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(1400, max(700, min(height + 40, 3000)))
        driver.save_screenshot(str(folder / f"{name}.png"))
        driver.set_window_size(1400, 1000)
        print(f"screenshot {folder / name}.png")

    try:
        for name, file in (("windows", "bench-windows"), ("trace", "bench-trace"), ("scopes", "bench-scopes"),
                           ("scope", "bench-scope")):
            driver.get(base + pages[name] + ("?limit=25" if name == "windows" else ""))
            shot(file)
        driver.get(base + "/console/try")
        driver.find_element(By.ID, "tenant").send_keys(pages["scope"].split("/")[3])
        driver.find_element(By.ID, "scope").send_keys(ask["scope"])
        driver.find_element(By.ID, "scopes").send_keys(ask["scopes"])
        driver.find_element(By.ID, "query").send_keys(ask["query"])
        driver.find_element(By.ID, "budget").clear()
        driver.find_element(By.ID, "budget").send_keys(ask["budget"])
        driver.find_element(By.ID, "send").click()
        shot("bench-try")
    finally:
        driver.quit()


async def _time(http: httpx.AsyncClient, name: str, method: str, path: str, repeat: int,
                data: dict[str, str] | None = None) -> None:
    times: list[float] = []
    size = 0
    for i in range(repeat + 2):
        t0 = time.perf_counter()
        r = await http.request(method, path, data=data)
        elapsed = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {r.status_code}: {r.text[:300]}")
        size = len(r.content)
        if i >= 2:  # two warm-ups
            times.append(elapsed)
    times.sort()
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    print(f"{name:<12} {statistics.median(times):>10.1f} {p95:>8.1f} {times[-1]:>8.1f} {size:>8}")


if __name__ == "__main__":
    asyncio.run(main())
