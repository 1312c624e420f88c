"""The command-line tests' fault server: one per test, in a thread of its own (the commands under
test are other processes). A module whose tests can share one defines a module-scoped ``server``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.testing import FaultServer


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    with srv.run_in_thread():
        yield srv
