"""Settings handed to a child process (to_env) come back equal, lists and secrets included."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from ctxpipe.core.settings import Settings, to_env


def test_to_env_round_trips_every_group(monkeypatch: pytest.MonkeyPatch) -> None:
    base = Settings()
    settings = base.model_copy(update={
        "api": base.api.model_copy(update={"tenant_keys": {"acme": SecretStr("k-1")}}),
        "assembly": base.assembly.model_copy(update={"lead_summary_methods": ["claude", "extractive"]}),
    })
    for key, value in to_env(settings).items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings
