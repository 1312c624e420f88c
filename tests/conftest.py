"""Shared fixtures: a state dir, the scripted kind, an engine under the mock clock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from engine import Settings, open_engine
from engine.testing import INLINE_DISK
from engine.testing._scripted import ScriptedKind


_SITE = Path(__file__).parent / "_fallback_site"
#: What ``--platform-fallback=all`` forces (``case`` is run on its own: see tests/platform).
_ALL_FALLBACKS = ("syncfs", "rcvlowat", "lock", "dirsync", "pread", "openrename", "fallocate")


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--platform-fallback", default="",
        help="run the suite with engine._platform's portable fallbacks forced on, here and in the "
             "processes the tests start: a comma list of " + ", ".join(_ALL_FALLBACKS) + ", case, or 'all'")


def pytest_configure(config: Any) -> None:
    raw = config.getoption("--platform-fallback")
    names = list(_ALL_FALLBACKS) if raw == "all" else [n for n in raw.split(",") if n]
    if not names:
        return
    from engine import _platform

    _platform.force_fallback(*names)  # before any engine starts
    os.environ["RECOVERY_TEST_PLATFORM_FALLBACK"] = ",".join(names)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SITE), os.environ.get("PYTHONPATH")) if p)


def pytest_report_header(config: Any) -> str | None:
    raw = config.getoption("--platform-fallback")
    return f"engine._platform fallbacks forced: {raw}" if raw else None


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
    async with open_engine(state_dir, settings, kinds=[scripted], disk=INLINE_DISK) as engine:
        yield engine



@pytest.fixture(autouse=True)
def _inline_disk_under_autojump(request: Any, monkeypatch: Any) -> None:
    """A test on the autojump clock must give the engine ``disk=INLINE_DISK``.

    With the default (helper threads) the clock would jump while a thread waits
    for the disk and fire timeouts real time never would: a flaky test. This
    makes the mistake fail at once, with the fix in the message.
    """
    if "autojump_clock" not in request.fixturenames:
        return
    from engine import _disk

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("this test runs on the autojump clock: give the engine (or the writer, "
                             "or the .part) disk=engine.testing.INLINE_DISK")

    monkeypatch.setattr(_disk._Threads, "run", refuse)
    monkeypatch.setattr(_disk._Threads, "start", refuse)
