"""``recovery download`` as a user runs it: real subprocesses against a fault server in a thread."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from engine.testing import FaultServer, Faults, content_sha256

# Wide enough that rich never wraps a message or suggestion in the middle.
ENV = {**os.environ, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
ENV.pop("RECOVERY_STATE_DIR", None)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    with srv.run_in_thread():
        yield srv


def download_argv(*args: str, tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "engine", "download", *args,
            "-o", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state")]


def recovery(*args: str, tmp_path: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``recovery download ARGS`` to the end."""
    return subprocess.run(download_argv(*args, tmp_path=tmp_path), capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshots(state_dir: Path) -> list[dict[str, Any]]:
    """Every operation snapshot in the state dir, decoded."""
    out = []
    for path in sorted((state_dir / "operations").glob("*.msgpack")):
        payload = msgpack.unpackb(path.read_bytes(), raw=False)
        out.append(payload["operation"])
    return out


def no_traceback(proc: Any) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in (proc.stdout or ""), proc.stderr


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_download_succeeds_with_the_exact_file(server: FaultServer, tmp_path: Path) -> None:
    """A plain download exits 0 and leaves the byte-exact file and no .part."""
    size = 3_000_000
    url = server.url("/files/ok.bin", size=size)
    proc = recovery(url, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    dest = tmp_path / "out" / "ok.bin"
    assert sha256_of(dest) == content_sha256("/files/ok.bin", size)
    assert not dest.with_name("ok.bin.part").exists()
    assert "done" in proc.stderr
    no_traceback(proc)


def test_not_found_exits_1_with_code_and_suggestion(server: FaultServer, tmp_path: Path) -> None:
    """A 404 fails at once: exit 1, the error code, the HTTP status and a suggestion are printed."""
    proc = recovery(server.base_url + "/missing/model.bin", tmp_path=tmp_path)
    assert proc.returncode == 1, proc.stderr
    err = squash(proc.stderr)
    assert "E_HTTP_CLIENT" in err and "404" in err
    assert "suggestion:" in err and "URL is correct" in err
    assert proc.stderr.count("suggestion:") == 1  # said once, at the end
    assert not (tmp_path / "out" / "model.bin").exists()
    no_traceback(proc)


@pytest.mark.parametrize(("args", "says"), [
    (["file:///etc/passwd"], "only http and https"),
    (["http://127.0.0.1:9/x.bin", "--set", "nope=1"], "unknown setting"),
    (["http://127.0.0.1:9/x.bin", "--sha256", "abc123"], "64 hexadecimal"),
    (["http://127.0.0.1:9/x.bin", "--set", "max_retries=-1"], "max_retries"),
    (["http://127.0.0.1:9/x.bin", "--max-retries", "lots"], "invalid int value"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    """A bad scheme, an unknown --set, a bad sha256 or a bad number exits 2 naming the problem."""
    proc = recovery(*args, tmp_path=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert says in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    no_traceback(proc)


def test_json_prints_one_event_per_line(server: FaultServer, tmp_path: Path) -> None:
    """--json prints only JSON lines: submitted, statuses, progress and retry_scheduled for a drop."""
    size = 2_000_000
    url = server.url("/files/json.bin", size=size, faults=Faults(drop_after=700_000, drop_times=1))
    proc = recovery(url, "--json", "--set", "initial_delay_s=0.1", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    events = [json.loads(line) for line in lines]  # every line parses
    assert len(events) == len(lines) > 4
    types = {e["type"] for e in events}
    assert {"submitted", "status", "progress", "retry_scheduled"} <= types
    op_ids = {e["op_id"] for e in events}
    assert len(op_ids) == 1
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert "recovering" in statuses and statuses[-1] == "success"
    retry = next(e for e in events if e["type"] == "retry_scheduled")
    assert retry["attempt"] == 1 and retry["error"]["code"] == "E_NET_INTERRUPTED"
    submitted = next(e for e in events if e["type"] == "submitted")
    assert submitted["kind"] == "download" and submitted["spec"]["dest"].endswith("json.bin")
    assert all(isinstance(e.get("ts"), (int, float)) for e in events)  # SPEC 9: every event has ts
    assert sha256_of(tmp_path / "out" / "json.bin") == content_sha256("/files/json.bin", size)


@pytest.mark.parametrize("saved", [None, '{"max_retries": 7, "initial_delay_s": 0.1}\n'])
def test_set_applies_to_the_run_only(server: FaultServer, tmp_path: Path, saved: str | None) -> None:
    """--set max_retries=0 wins for the run (one dropped attempt exhausts); settings.json is left as it was."""
    settings_file = tmp_path / "state" / "settings.json"
    if saved is not None:
        settings_file.parent.mkdir(parents=True)
        settings_file.write_text(saved)
    path = f"/files/once-{saved is None}.bin"
    url = server.url(path, size=1_000_000, faults=Faults(drop_after=100_000))
    proc = recovery(url, "--json", "--set", "max_retries=0", tmp_path=tmp_path)
    assert proc.returncode == 1, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    statuses = [e for e in events if e["type"] == "status"]
    assert statuses[-1]["status"] == "exhausted" and statuses[-1]["error"]["code"] == "E_NET_INTERRUPTED"
    assert "retry_scheduled" not in {e["type"] for e in events}
    assert len(server.stats.paths[path].records) == 1
    if saved is None:
        assert not settings_file.exists()
    else:
        assert settings_file.read_text() == saved


def test_sha256_mismatch_fails_after_one_fresh_retry(server: FaultServer, tmp_path: Path) -> None:
    """A wrong --sha256 is retried once from scratch, then exits 1 with E_INTEGRITY and no file."""
    size = 300_000
    url = server.url("/files/bad.bin", size=size)
    proc = recovery(url, "--json", "--sha256", "ab" * 32, "--set", "initial_delay_s=0.05", tmp_path=tmp_path)
    assert proc.returncode == 1, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    retries = [e for e in events if e["type"] == "retry_scheduled"]
    assert [e["error"]["code"] for e in retries] == ["E_INTEGRITY"]
    final = [e for e in events if e["type"] == "status"][-1]
    assert final["status"] == "failed" and final["error"]["code"] == "E_INTEGRITY"
    assert "sha256 mismatch" in final["error"]["message"]
    records = server.stats.paths["/files/bad.bin"].records
    assert [r.range_start for r in records] == [0, 0]  # the retry started from scratch
    assert not (tmp_path / "out" / "bad.bin").exists() and not (tmp_path / "out" / "bad.bin.part").exists()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_ctrl_c_pauses_and_rerun_resumes(server: FaultServer, tmp_path: Path) -> None:
    """Ctrl-C exits 130 with the op paused; the same command again resumes by Range and ends exact."""
    size = 4 * 1024 * 1024
    url = server.url("/files/ctrlc.bin", size=size, faults=Faults(rate_bps=2 * 1024 * 1024))
    part = tmp_path / "out" / "ctrlc.bin.part"
    proc = subprocess.Popen(download_argv(url, tmp_path=tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        wait_for(lambda: part.exists() and part.stat().st_size > 0, 20, "the .part to get bytes")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("paused") == 1
    [snap] = snapshots(tmp_path / "state")
    assert snap["status"] == "paused"
    kept = snap["state"]["offset"]
    assert 0 < kept < size and part.stat().st_size == kept

    again = recovery(url, tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sha256_of(tmp_path / "out" / "ctrlc.bin") == content_sha256("/files/ctrlc.bin", size)
    first, second = server.stats.paths["/files/ctrlc.bin"].records
    assert first.range_start == 0
    assert second.status == 206 and second.range_start == kept and second.bytes_sent == size - kept
    [snap] = snapshots(tmp_path / "state")
    assert snap["status"] == "success"


@pytest.mark.parametrize("delay_s", [0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
def test_ctrl_c_at_startup_never_shows_a_traceback(server: FaultServer, tmp_path: Path, delay_s: float) -> None:
    """SIGINT from the first moment on exits 130 (or 0 if already done), never with a traceback."""
    url = server.url(f"/files/early-{delay_s}.bin", size=1_000_000, faults=Faults(rate_bps=1024 * 1024))
    proc = subprocess.Popen(download_argv(url, tmp_path=tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        time.sleep(delay_s)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    frames = re.findall(r'File "([^"]+)"', err)
    if frames and not any("/engine/" in frame for frame in frames):
        # The signal landed in CPython's own start-up (site, .pth files, runpy), before the
        # first line of the engine ran: the interpreter reports that itself, no engine code
        # can catch it. A person cannot press Ctrl-C that early; the test can.
        return
    seen = f"exit {proc.returncode}; stdout {out!r}; stderr {err!r}"  # all of it, for a rare failure
    assert "Traceback" not in err and "Traceback" not in out, seen
    if proc.returncode == -signal.SIGINT:
        # The signal came before the interpreter installed any handler: the default action
        # ended the process, which a shell reports as 130, and nothing was printed or started.
        assert not err and not out, seen
    else:
        assert proc.returncode in (130, 0), seen
    if proc.returncode == 130 and (tmp_path / "state" / "operations").exists():
        assert all(s["status"] in ("paused", "success") for s in snapshots(tmp_path / "state"))


def test_version_prints_the_installed_version() -> None:
    """``recovery --version`` names the installed distribution's version and exits 0."""
    from importlib import metadata

    out = subprocess.run([sys.executable, "-m", "engine", "--version"], capture_output=True, text=True,
                         env=ENV, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"recovery {metadata.version('recovery-engine')}"


def test_download_help_names_defaults_and_retry_options() -> None:
    """``recovery download --help`` gives -o's default and a line of help for every retry option."""
    proc = subprocess.run([sys.executable, "-m", "engine", "download", "--help"], capture_output=True, text=True,
                          env={**ENV, "COLUMNS": "120"}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    text = squash(proc.stdout)
    assert "-o DIR, --output-dir DIR directory to write into (default: the current directory)" in text
    for flag, says in (("--max-retries N", "automatic retries after the first attempt (default 5"),
                       ("--initial-delay S", "seconds before retry 1 (default 2"),
                       ("--backoff-factor F", "each further delay is F times the last (default 2"),
                       ("--max-delay S", "cap on any delay, in seconds (default 300")):
        assert f"{flag} {says}" in text, flag


def test_log_names_url_and_destination_first_and_counts_attempts_like_the_display(
        server: FaultServer, tmp_path: Path) -> None:
    """recovery.log names the redacted URL and the destination at first mention, and says Attempt 1/5 on a retry."""
    url = server.url("/files/logged.bin", size=300_000, faults=Faults(drop_after=100_000, drop_times=1))
    proc = recovery(url.replace("http://", "http://user:SECRET-LOG@"), "--set", "initial_delay_s=0.05",
                    tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "state" / "logs" / "recovery.log").read_text()
    [op_id] = [s["id"] for s in snapshots(tmp_path / "state")]
    dest = tmp_path / "out" / "logged.bin"
    new = [line for line in text.splitlines() if f"op {op_id}: new download: " in line]
    assert len(new) == 1 and "/files/logged.bin?" in new[0] and new[0].endswith(f" -> {dest}"), text
    assert "SECRET-LOG" not in text
    assert f"op {op_id}: Attempt 1/5" in text and "attempt 0/" not in text.lower()
