"""CTX_TEST_SERVERS=containers on a machine without a container engine: one clear error."""

from __future__ import annotations

import os

import pytest

from ctxpipe.core.settings import Settings
from ctxpipe.infra.containers import ContainerServers, engine_address
from ctxpipe.infra.exceptions import StackError


@pytest.mark.skipif(os.environ.get("CTX_TEST_SERVERS") == "containers", reason="the fixtures use containers")
def test_without_an_engine_the_error_says_what_to_do() -> None:
    if engine_address() is not None:
        pytest.skip("a container engine is reachable here")
    servers = ContainerServers(Settings())
    with pytest.raises(StackError) as info:
        servers.up()
    message = str(info.value)
    assert "no container engine reachable" in message and "unset it to use the local stack" in message
    assert "\n" not in message
    assert servers.settings is None
