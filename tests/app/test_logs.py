"""ctxpipe.app.logs: our own lines at log.level, libraries at log.library_level, text or JSON."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from ctxpipe.app.logs import OWN_PACKAGES, configure_logging
from ctxpipe.core.settings import LogSettings


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = (*OWN_PACKAGES, "faust", "uvicorn", "uvicorn.error", "uvicorn.access")
    levels = {n: logging.getLogger(n).level for n in names}
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names}
    yield
    for n, (hs, prop) in saved.items():
        lg = logging.getLogger(n)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        for h in hs:
            lg.addHandler(h)
        lg.propagate = prop
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def _emit(capsys: pytest.CaptureFixture[str]) -> list[str]:
    capsys.readouterr()  # what earlier tests' background threads wrote is not ours
    logging.getLogger("ctxpipe.streams.app").info("worker joined")
    logging.getLogger("faust.transport").info("Starting...")
    logging.getLogger("aiokafka.consumer").warning("coordinator dead")
    logging.getLogger().info("Quantization parameters for tensor not specified")
    logging.getLogger("uvicorn.access").info('"GET /healthz" 200')
    # Only the lines these records made (a thread left by another test may write too).
    marks = ("worker joined", "Starting...", "coordinator dead", "Quantization", "GET /healthz")
    return [ln for ln in capsys.readouterr().err.splitlines() if any(m in ln for m in marks)]


def test_text_defaults_keep_library_info_out(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings())
    lines = _emit(capsys)
    assert len(lines) == 2
    assert lines[0].endswith("INFO ctxpipe.streams.app: worker joined")
    assert lines[1].endswith("WARNING aiokafka.consumer: coordinator dead")


def test_json_lines_and_access_log(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(format="json", access_log=True, library_level="INFO"))
    docs = [orjson.loads(line) for line in _emit(capsys)]
    assert [d["logger"] for d in docs] == ["ctxpipe.streams.app", "faust.transport", "aiokafka.consumer", "root", "uvicorn.access"]
    assert docs[0]["level"] == "info" and docs[0]["message"] == "worker joined"
    assert docs[0]["ts"].endswith("+00:00")


def test_handlers_another_uvicorn_left_behind_are_replaced(capsys: pytest.CaptureFixture[str]) -> None:
    access = logging.getLogger("uvicorn.access")
    access.addHandler(logging.StreamHandler())  # what uvicorn's own log config installs
    access.propagate = False
    configure_logging(LogSettings(format="json", access_log=True))
    assert [orjson.loads(ln)["logger"] for ln in _emit(capsys)] == ["ctxpipe.streams.app", "aiokafka.consumer", "uvicorn.access"]


def test_own_level_can_be_raised(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(level="WARNING"))
    assert [ln for ln in _emit(capsys) if "ctxpipe.streams.app" in ln] == []
