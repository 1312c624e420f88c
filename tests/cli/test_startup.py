"""Start-up of ``recovery download`` loads only what the command uses (issue 15, item 6).

Checked structurally, never by timing: a plain-http download in a fresh
process must not load the control channel, the client commands, the project
importer, ``importlib.metadata`` (only ``--version`` needs it), nor build a
TLS context that trusts anything (loading the CA bundle is tens of
milliseconds). ``ssl`` itself is not checked: trio imports it whatever the
command. The timing is the start-up row of ``benchmarks/bench_download.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine._cli._main import COMMANDS, build_parser
from engine.testing import FaultServer

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
ENV.pop("RECOVERY_STATE_DIR", None)

# Run in a fresh interpreter: record every CA load, run the command as the
# console script does, then write what was loaded to the file named last.
PROBE = r"""
import json, ssl, sys
loads = []
for name in ("load_verify_locations", "load_default_certs", "set_default_verify_paths"):
    def record(self, *a, _name=name, _orig=getattr(ssl.SSLContext, name), **k):
        loads.append(_name)
        return _orig(self, *a, **k)
    setattr(ssl.SSLContext, name, record)
argv, report = sys.argv[1:-1], sys.argv[-1]
from engine._cli import main
code = main(argv)
with open(report, "w") as f:
    json.dump({"code": code, "ca_loads": loads, "modules": sorted(sys.modules)}, f)
"""

NOT_FOR_A_DOWNLOAD = (
    "starlette", "hypercorn", "prometheus_client", "rich", "yaml", "importlib.metadata",
    "engine._server", "engine._cli._client", "engine._cli._project", "engine._cli._serve",
    "engine._cli._report", "engine._projects._comfyui", "engine._projects._file", "engine._report",
    "engine.testing",
)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    with srv.run_in_thread():
        yield srv


def probe(tmp_path: Path, *argv: str) -> dict[str, object]:
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv, str(report)], capture_output=True, text=True,
                          env=ENV, timeout=60)
    assert proc.returncode == 0 and report.exists(), proc.stderr
    data: dict[str, object] = json.loads(report.read_text())
    return data


def test_plain_http_download_loads_only_what_it_uses(server: FaultServer, tmp_path: Path) -> None:
    """A plain-http ``recovery download`` loads no server, client, importer or CA bundle."""
    url = server.url("/files/small.bin", size=1024)
    seen = probe(tmp_path, "download", url, "-o", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state"),
                 "--json")
    assert seen["code"] == 0 and (tmp_path / "out" / "small.bin").stat().st_size == 1024
    modules = set(seen["modules"])  # type: ignore[call-overload]
    assert {"trio", "httpx", "engine._engine", "engine._download._kind"} <= modules  # the probe saw the run
    loaded = sorted(m for m in modules for p in NOT_FOR_A_DOWNLOAD if m == p or m.startswith(p + "."))
    assert loaded == []
    assert seen["ca_loads"] == []  # (httpx imports certifi to build any context: only loading it counts)


def test_every_command_names_the_module_that_adds_it() -> None:
    """``COMMANDS`` lists every subcommand, and loading only its module still parses it."""
    def names(parser: object) -> set[str]:
        [sub] = [a for a in parser._subparsers._group_actions]  # type: ignore[attr-defined]
        return set(sub.choices)

    assert names(build_parser()) == set(COMMANDS)
    for command in COMMANDS:
        assert command in names(build_parser(command))


def test_help_without_a_command_lists_every_command() -> None:
    """``recovery -h`` still loads every command (the lazy path needs the command first)."""
    proc = subprocess.run([sys.executable, "-m", "engine", "-h"], capture_output=True, text=True, env=ENV,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout


def test_the_console_script_skips_the_last_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    """``entry`` freezes the collector before exiting: the interpreter's last collection has nothing to walk."""
    import gc
    import signal

    from engine._cli import entry

    monkeypatch.setattr(sys, "argv", ["recovery"])  # no command: help, exit 2
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as info:
            entry()
        assert info.value.code == 2 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        signal.signal(signal.SIGINT, previous)  # entry ignores Ctrl-C once its exit code is known
