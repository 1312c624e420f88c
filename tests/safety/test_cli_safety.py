"""The user's files through ``recovery download`` (SPEC 6.1): real processes, a real server, real files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing import FaultServer, content_sha256

ENV = {**os.environ, "COLUMNS": "250"}
ENV.pop("RECOVERY_STATE_DIR", None)
SIZE = 200_000


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    with srv.run_in_thread():
        yield srv


def download(url: str, out: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "engine", "download", url, "-o", str(out), "--state-dir", str(state), *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=60)


def test_existing_file_exits_1_with_e_exists_and_is_untouched(server: FaultServer, tmp_path: Path) -> None:
    out = tmp_path / "o7"
    out.mkdir()
    mine = out / "f3.bin"
    mine.write_bytes(b"the user's only copy")
    before = mine.stat()
    url = server.url("/files/f3.bin", size=SIZE)
    proc = download(url, out, tmp_path / "state")
    assert proc.returncode == 1, proc.stderr
    assert "E_EXISTS" in proc.stderr and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert mine.read_bytes() == b"the user's only copy" and mine.stat().st_mtime_ns == before.st_mtime_ns
    assert server.stats.requests == 0
    replaced = download(url, out, tmp_path / "state", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert hashlib.sha256(mine.read_bytes()).hexdigest() == content_sha256("/files/f3.bin", SIZE)


def test_rerun_of_a_finished_download_exits_0_without_a_request(server: FaultServer, tmp_path: Path) -> None:
    url = server.url("/files/done.bin", size=SIZE)
    sha = content_sha256("/files/done.bin", SIZE)
    first = download(url, tmp_path / "out", tmp_path / "state", "--sha256", sha)
    assert first.returncode == 0, first.stderr
    served = server.stats.requests
    again = download(url, tmp_path / "out", tmp_path / "state", "--sha256", sha)
    assert again.returncode == 0, again.stderr
    assert server.stats.requests == served  # not a byte fetched again
    # another state dir (no record of it): the file matching --sha256 is complete at once too
    other = download(url, tmp_path / "out", tmp_path / "state2", "--sha256", sha)
    assert other.returncode == 0, other.stderr
    assert server.stats.requests == served


def test_two_engines_on_one_destination(server: FaultServer, tmp_path: Path) -> None:
    """A second engine (its own state dir) writing the same file gets E_IN_USE, never E_INTERNAL;
    the first finishes with the exact file."""
    import time

    from engine.testing import Faults

    url = server.url("/files/big.bin", size=SIZE, faults=Faults(rate_bps=25_000))  # 8 s: room for the second
    argv = [sys.executable, "-m", "engine", "download", url, "-o", str(tmp_path / "out"),
            "--state-dir", str(tmp_path / "s1")]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        part = tmp_path / "out" / "big.bin.part"
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size > 0):  # the first writer holds the .part
            assert first.poll() is None and time.monotonic() < deadline, "the first download never started"
            time.sleep(0.01)
        second = download(url, tmp_path / "out", tmp_path / "s2")
        assert second.returncode == 1, second.stderr
        assert "E_IN_USE" in second.stderr and "E_INTERNAL" not in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 0, err
    digest = hashlib.sha256((tmp_path / "out" / "big.bin").read_bytes()).hexdigest()
    assert digest == content_sha256("/files/big.bin", SIZE)


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000])
def test_import_of_deeply_nested_json_exits_2(tmp_path: Path, body: str) -> None:
    """A workflow nested 100,000 levels deep is a usage error (exit 2) naming the file, not a traceback."""
    workflow = tmp_path / "deep.json"
    workflow.write_text(body)
    (tmp_path / "ComfyUI" / "models").mkdir(parents=True)
    argv = [sys.executable, "-m", "engine", "import", str(workflow), "--comfyui", str(tmp_path / "ComfyUI"),
            "--state-dir", str(tmp_path / "state"), "--dry-run"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr
    assert "deep.json" in proc.stderr


SECRETS = ("s3cr3t-bearer-value", "k3y-value-9137", "p4ssw0rd-in-url")


@pytest.mark.parametrize("case", ["refused header", "exhausted with credentials"])
def test_no_credential_reaches_any_output(server: FaultServer, tmp_path: Path, case: str) -> None:
    """Credentials in headers (also with a trailing space or a vertical tab) and in ``user:pass@``
    appear in no error, event (--json), progress line or log line."""
    from engine.testing import Faults

    state = tmp_path / "state"
    url = server.url("/files/secret.bin", size=SIZE, faults=Faults(status=503))
    host = url.split("://", 1)[1]
    url = f"http://user:{SECRETS[2]}@{host}"
    if case == "refused header":  # a control character inside a value: refused before any request
        headers = ["-H", f"Authorization: Bearer {SECRETS[0]}\x0b{SECRETS[0]}", "-H", f"X-Api-Key: {SECRETS[1]}"]
    else:  # surrounding whitespace (a paste accident) is trimmed, and the value still never shown
        headers = ["-H", f"Authorization: Bearer {SECRETS[0]} ", "-H", f"X-Api-Key: \x0b{SECRETS[1]}\x0b"]
    outputs = []
    for extra in ([], ["--json"]):
        proc = download(url, tmp_path / "out", state, *headers, *extra, "--set", "max_retries=1",
                        "--set", "initial_delay_s=0.01")
        assert proc.returncode in (1, 2), proc.stderr
        outputs += [proc.stdout, proc.stderr]
    logs = [p.read_text(errors="replace") for p in (state / "logs").glob("recovery.log*")]
    if case == "refused header":
        assert server.stats.requests == 0  # refused before any request
        assert "Authorization" in outputs[1]  # the field is named...
    else:
        assert server.stats.requests >= 2 and "E_SERVER" in outputs[1]
        assert logs and "secret.bin" in logs[0]  # the log was written, and names the URL
    for text in outputs + logs:
        for secret in SECRETS:
            assert secret not in text  # ...its value never
