"""Shared fixtures: a state dir, the scripted kind, an engine under the mock clock."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest

from engine import Settings, open_engine
from engine.testing._scripted import ScriptedKind


@pytest.fixture
def state_dir(tmp_path: Any) -> Any:
    return tmp_path / "state"


@pytest.fixture
def scripted() -> ScriptedKind:
    return ScriptedKind()


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
async def eng(state_dir: Any, scripted: ScriptedKind, settings: Settings) -> AsyncIterator[Any]:
    async with open_engine(state_dir, settings, kinds=[scripted]) as engine:
        yield engine

