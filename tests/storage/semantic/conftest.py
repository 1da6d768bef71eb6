"""Store fixtures: every contract test runs against Edge in-process and in its child
process (tmp dir), and the server backend (qdrant-client in-memory mode)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from semantic_helpers import DIM, open_memory_server

from storage.semantic import EdgeProcessStore, EdgeSemanticStore, SemanticStore


@pytest.fixture(params=["edge", "edge-process", "server"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SemanticStore]:
    s: SemanticStore
    if request.param == "edge":
        s = EdgeSemanticStore.open(tmp_path / "shard", DIM)
    elif request.param == "edge-process":
        s = await EdgeProcessStore.open(tmp_path / "shard", DIM)
    else:
        s = await open_memory_server()
    yield s
    await s.aclose()
