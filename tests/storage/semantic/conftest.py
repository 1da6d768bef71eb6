"""Store fixtures: every contract test runs against Edge in-process and in its child
process (tmp dir), and the server backend twice: on qdrant-client's in-memory mode and on
a real Qdrant server process (started once for the session)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from ctxpipe.infra.qdrant_server import QdrantServer, qdrant_binary
from ctxpipe.storage.semantic import EdgeProcessStore, EdgeSemanticStore, SemanticStore, ServerSemanticStore

from support.semantic import DIM, open_memory_server


@pytest.fixture(scope="session")
def qdrant_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QdrantServer]:
    binary = qdrant_binary()
    if binary is None:
        pytest.skip("no Qdrant server binary here (set CTX_TEST_QDRANT_BIN)")
    server = QdrantServer.start(binary, tmp_path_factory.mktemp("qdrant-server"))
    yield server
    server.stop()


@pytest.fixture(params=["edge", "edge-process", "memory-server", "qdrant-server"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SemanticStore]:
    s: SemanticStore
    if request.param == "edge":
        s = EdgeSemanticStore.open(tmp_path / "shard", DIM)
    elif request.param == "edge-process":
        s = await EdgeProcessStore.open(tmp_path / "shard", DIM)
    elif request.param == "memory-server":
        s = await open_memory_server()
    else:
        server: QdrantServer = request.getfixturevalue("qdrant_server")
        # The 1.18 server is a minor version behind the client: no version probe (it warns).
        client = AsyncQdrantClient(url=server.url, check_compatibility=False)
        collection = f"test_{uuid.uuid4().hex[:12]}"
        s = await ServerSemanticStore.open(client, collection, DIM)
        yield s
        await client.delete_collection(collection)
        await s.aclose()
        return
    yield s
    await s.aclose()
