"""The command line joins the engine that holds the state directory (SPEC 13).

Real processes: ``recovery serve`` (or a first ``recovery download``) holds the
state directory; a second ``recovery download`` hands its operation to it over
the control channel and follows it live. Every wait is on a condition (the
server's answer, a file appearing, output), with a generous deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from engine._cli import main
from engine.testing import FaultServer, Faults, content_sha256

MiB = 1024 * 1024
DEADLINE_S = 60.0
ENV = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
ENV.pop("RECOVERY_STATE_DIR", None)


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    with server.run_in_thread():
        yield server


def wait_until(check: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    """Poll ``check`` until it returns something true (a condition, never a guessed time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_download(tmp_path: Path, name: str, url: str, state_dir: Path, out_dir: Path,
                   *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], Path]:
    """``python -m engine download URL -o OUT --state-dir STATE``, its stderr in a file (never a full pipe)."""
    log = tmp_path / f"{name}.stderr"
    argv = [sys.executable, "-m", "engine", "download", url, "-o", str(out_dir), *extra]
    if state_dir is not None:
        argv += ["--state-dir", str(state_dir)]
    with open(log, "w") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env or ENV,
                                cwd=tmp_path)
    return proc, log


def finish(proc: subprocess.Popen[str], timeout: float = DEADLINE_S) -> int:
    try:
        proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def ops_of(server: Any) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/operations", headers={"Authorization": f"Bearer {server.token}"},
                         timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def op_for(server: Any, filename: str) -> dict[str, Any] | None:
    return next((op for op in ops_of(server) if op["spec"]["dest"].endswith(os.sep + filename)), None)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_while_serve_runs_is_handed_to_it(tmp_path, faults, start_serve, stop_serve, capsys):
    """download joins a running serve: the op is in `recovery list` and the API, the CLI shows it and exits 0."""
    server = start_serve(tmp_path / "state", tmp_path / "root")
    try:
        size = 3 * MiB // 2
        url = faults.url("/files/joined.bin", size=size, faults=Faults(rate_bps=MiB))
        proc, log = start_download(tmp_path, "joined", url, server.state_dir, server.root)
        op = wait_until(lambda: op_for(server, "joined.bin"), "the download to reach the server")
        assert main(["list", "--state-dir", str(server.state_dir)]) == 0
        listed = capsys.readouterr().out
        assert op["id"] in listed and "joined.bin" in listed
        assert finish(proc) == 0, log.read_text()
        assert server.wait_status(op["id"], "success")["status"] == "success"
        stderr = log.read_text()
        assert "joined the engine" in stderr and server.url in stderr
        assert f"(id {op['id']})" in stderr and "✓ joined.bin: done" in stderr
        assert "already using the state directory" not in stderr and "Traceback" not in stderr
        assert sha256_of(server.root / "joined.bin") == content_sha256("/files/joined.bin", size)
        assert len(ops_of(server)) == 1  # the command ran no engine of its own
    finally:
        stop_serve(server)


def test_ctrl_c_of_a_joined_download_pauses_it_on_the_server(tmp_path, faults, start_serve, stop_serve):
    """SIGINT to a download that joined serve: exit 130, "paused" said once, the op paused on the server."""
    server = start_serve(tmp_path / "state", tmp_path / "root")
    try:
        url = faults.url("/files/long.bin", size=64 * MiB, faults=Faults(rate_bps=MiB // 2))
        proc, log = start_download(tmp_path, "long", url, server.state_dir, server.root)
        wait_until(lambda: (op_for(server, "long.bin") or {}).get("bytes_done", 0) > 0, "bytes on the server")
        wait_until(lambda: "long.bin -> " in log.read_text(), "the CLI to follow the operation")
        proc.send_signal(signal.SIGINT)
        assert finish(proc) == 130, log.read_text()
        op = op_for(server, "long.bin")
        assert op is not None and op["status"] == "paused"
        stderr = log.read_text()
        assert stderr.count("paused") == 1 and "Traceback" not in stderr
        # The server goes on serving; the same command again resumes the paused operation there.
        again, log2 = start_download(tmp_path, "again", url, server.state_dir, server.root)
        server.wait_status(op["id"], "in_progress", "pending", timeout=DEADLINE_S)
        again.send_signal(signal.SIGINT)
        assert finish(again) == 130, log2.read_text()
        assert [o["id"] for o in ops_of(server)] == [op["id"]]
    finally:
        stop_serve(server)


def test_destination_outside_the_servers_root_is_refused_naming_it(tmp_path, faults, start_serve, stop_serve):
    """A joined download into a folder outside serve's download_root exits 2 with a message naming the root."""
    server = start_serve(tmp_path / "state", tmp_path / "root")
    try:
        proc, log = start_download(tmp_path, "outside", faults.url("/files/o.bin", size=1000), server.state_dir,
                                   tmp_path / "elsewhere")
        assert finish(proc) == 2, log.read_text()
        stderr = log.read_text()
        assert "E_INVALID_INPUT" in stderr and f"download root {server.root}" in stderr
        assert ops_of(server) == [] and not (tmp_path / "elsewhere" / "o.bin").exists()
    finally:
        stop_serve(server)


def test_recovery_state_dir_variable_finds_the_server(tmp_path, faults, start_serve, stop_serve):
    """With $RECOVERY_STATE_DIR (no --state-dir), download joins serve and list and report find it."""
    server = start_serve(tmp_path / "state", tmp_path / "root")
    env = {**ENV, "RECOVERY_STATE_DIR": str(server.state_dir)}
    try:
        proc, log = start_download(tmp_path, "env", faults.url("/files/env.bin", size=20_000), None, server.root,
                                   env=env)
        assert finish(proc) == 0, log.read_text()
        assert "joined the engine" in log.read_text()
        [op] = ops_of(server)
        listed = subprocess.run([sys.executable, "-m", "engine", "list", "--json"], capture_output=True,
                                text=True, env=env, timeout=DEADLINE_S)
        assert listed.returncode == 0, listed.stderr
        assert [o["id"] for o in json.loads(listed.stdout)] == [op["id"]]
        report = subprocess.run([sys.executable, "-m", "engine", "report", op["id"], "--json", "--no-network"],
                                capture_output=True, text=True, env=env, timeout=DEADLINE_S)
        assert report.returncode == 0, report.stderr
        assert op["id"] in report.stdout
    finally:
        stop_serve(server)


def test_second_download_joins_the_first(tmp_path, faults):
    """Without serve, a second download on the same state dir joins the first one's engine instead of failing."""
    state, out = tmp_path / "state", tmp_path / "out"
    long_url = faults.url("/files/first.bin", size=64 * MiB, faults=Faults(rate_bps=MiB // 2))
    first, log1 = start_download(tmp_path, "first", long_url, state, out)
    try:
        # The first command's engine announces its loopback control channel once it runs.
        wait_until(lambda: (state / "server.json").exists(), "the first command's server.json")
        size = 200_000
        second, log2 = start_download(tmp_path, "second", faults.url("/files/second.bin", size=size), state, out)
        assert finish(second) == 0, log2.read_text()
        stderr = log2.read_text()
        assert "joined the engine" in stderr and "✓ second.bin: done" in stderr
        assert sha256_of(out / "second.bin") == content_sha256("/files/second.bin", size)
        assert first.poll() is None  # the first one still runs its own download
        first.send_signal(signal.SIGINT)
        assert finish(first) == 130, log1.read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not (state / "server.json").exists()  # removed on the way out


def write_project(folder: Path, url: str, *, install: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    project = folder / "project.toml"
    steps = f'[[steps]]\nkind = "download"\nurl = "{url}"\ndest = "models/p.bin"\n'
    if install:
        steps += f'[[steps]]\nkind = "install"\nargv = ["{sys.executable}", "-c", "print(42)"]\n'
    project.write_text(f'name = "joined-project"\n{steps}')
    return project


def run_project(project: Path, state_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "run", str(project), "--state-dir", str(state_dir),
                           *extra], capture_output=True, text=True, env=ENV, timeout=DEADLINE_S,
                          cwd=project.parent)


def test_run_joins_serve_and_a_rerun_is_complete(tmp_path, faults, start_serve, stop_serve):
    """recovery run hands its project to serve (--allow-installs), exits 0; the rerun there is complete at once."""
    server = start_serve(tmp_path / "state", tmp_path / "root", "--allow-installs")
    try:
        project = write_project(server.root / "proj", faults.url("/files/p.bin", size=50_000))
        first = run_project(project, server.state_dir)
        assert first.returncode == 0, first.stderr
        assert "joined the engine" in first.stderr
        [op] = ops_of(server)
        assert op["kind"] == "project" and op["status"] == "success"
        assert (server.root / "proj" / "models" / "p.bin").stat().st_size == 50_000
        again = run_project(project, server.state_dir)
        assert again.returncode == 0, again.stderr
        assert "already complete" in again.stderr
        assert [o["id"] for o in ops_of(server)] == [op["id"]]  # nothing ran again
        restarted = run_project(project, server.state_dir, "--restart")
        assert restarted.returncode == 0, restarted.stderr
        assert len(ops_of(server)) == 2
    finally:
        stop_serve(server)


def test_run_with_installs_refused_by_serve_says_why(tmp_path, faults, start_serve, stop_serve):
    """A serve without --allow-installs refuses a joined project that runs a command: exit 1, naming the flag."""
    server = start_serve(tmp_path / "state", tmp_path / "root")
    try:
        project = write_project(server.root / "proj", faults.url("/files/q.bin", size=1000))
        proc = run_project(project, server.state_dir)
        assert proc.returncode == 1, proc.stderr
        assert "E_FORBIDDEN" in proc.stderr and "--allow-installs" in proc.stderr
        assert ops_of(server) == []
        downloads_only = write_project(server.root / "dl", faults.url("/files/q.bin", size=1000), install=False)
        proc = run_project(downloads_only, server.state_dir)  # runs no command: accepted
        assert proc.returncode == 0, proc.stderr
    finally:
        stop_serve(server)


def test_joined_download_json_prints_its_events(tmp_path, faults, start_serve, stop_serve):
    """download --json while serve runs prints one JSON event per line, only for its own operation, to success."""
    server = start_serve(tmp_path / "state", tmp_path / "root")
    try:
        other = server.submit(faults.url("/files/other.bin", size=64 * MiB, faults=Faults(rate_bps=MiB)), "other.bin")
        url = faults.url("/files/j.bin", size=300_000, faults=Faults(drop_after=100_000, drop_times=1))
        proc = subprocess.run([sys.executable, "-m", "engine", "download", url, "-o", str(server.root), "--json",
                               "--state-dir", str(server.state_dir)], capture_output=True, text=True, env=ENV,
                              timeout=DEADLINE_S, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        assert {e["op_id"] for e in events if "op_id" in e} == {op_for(server, "j.bin")["id"]}
        assert other["id"] not in proc.stdout
        statuses = [e["status"] for e in events if e["type"] == "status"]
        assert "recovering" in statuses and statuses[-1] == "success"
        assert "progress" in {e["type"] for e in events}
    finally:
        stop_serve(server)


def test_import_joins_serve_without_allow_installs(tmp_path, faults, start_serve, stop_serve):
    """recovery import hands its models (downloads only) to a serve without --allow-installs; a rerun has nothing to do."""
    server = start_serve(tmp_path / "state", tmp_path / "root")
    try:
        comfy = server.root / "ComfyUI"
        (comfy / "models").mkdir(parents=True)
        url = faults.url("/files/checkpoints/base.safetensors", size=120_000)
        workflow = tmp_path / "workflow.json"
        workflow.write_text(json.dumps({"nodes": [{"id": 1, "type": "CheckpointLoaderSimple", "mode": 0,
                                                   "properties": {"models": [{"name": "base.safetensors",
                                                                              "url": url,
                                                                              "directory": "checkpoints"}]}}],
                                        "links": []}))
        argv = [sys.executable, "-m", "engine", "import", str(workflow), "--comfyui", str(comfy),
                "--state-dir", str(server.state_dir)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=DEADLINE_S, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "joined the engine" in proc.stderr
        [op] = ops_of(server)
        assert op["kind"] == "project" and op["status"] == "success"
        dest = comfy / "models" / "checkpoints" / "base.safetensors"
        assert sha256_of(dest) == content_sha256("/files/checkpoints/base.safetensors", 120_000)
        again = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=DEADLINE_S, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "nothing to download" in again.stderr and len(ops_of(server)) == 1
    finally:
        stop_serve(server)


def test_two_downloads_started_together_both_succeed(tmp_path, faults):
    """Started at once on one state dir (before either serves): one joins or waits for the other, never refused."""
    state, out = tmp_path / "state", tmp_path / "out"
    a_url = faults.url("/files/together-a.bin", size=64 * MiB, faults=Faults(rate_bps=MiB))
    b_url = faults.url("/files/together-b.bin", size=200_000)
    a, log_a = start_download(tmp_path, "a", a_url, state, out)
    b, log_b = start_download(tmp_path, "b", b_url, state, out)
    try:
        assert finish(b) == 0, log_b.read_text()
        assert sha256_of(out / "together-b.bin") == content_sha256("/files/together-b.bin", 200_000)
        assert a.poll() is None  # whichever engine it runs in now, the long one goes on
        a.send_signal(signal.SIGINT)
        assert finish(a) == 130, log_a.read_text()
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    both = log_a.read_text() + log_b.read_text()
    # Which one joins depends on who took the directory first and how long the other took to
    # start; whether it joined or waited for the directory to come free, nobody is refused.
    assert "already using the state directory" not in both and "refused" not in both
    assert "Traceback" not in both


async def test_an_engine_that_serves_no_channel_is_waited_for_then_named(tmp_path, autojump_clock, capsys):
    """Held by an engine that never serves (an embedding program): the command waits, then fails naming it."""
    import argparse

    import trio

    from engine import Settings, StateDirLocked, open_engine
    from engine._cli._runner import JOIN_WAIT_S, _run_or_join
    from engine._specs import DownloadSpec

    args = argparse.Namespace(state_dir=tmp_path / "state", json=False)
    spec = DownloadSpec(url="http://127.0.0.1:9/x.bin", dest=str(tmp_path / "x.bin"))
    async with open_engine(tmp_path / "state", Settings()):
        start = trio.current_time()
        with pytest.raises(StateDirLocked, match="it serves no control channel to join"):
            await _run_or_join([spec], args, {}, {})
        assert trio.current_time() - start >= JOIN_WAIT_S
    assert "waiting for the engine that holds" in capsys.readouterr().err


def test_when_the_engine_it_joined_stops_the_command_continues_in_its_own(tmp_path, faults):
    """Ctrl-C on the first command pauses only its own download; the joined one goes on in its own engine."""
    import msgpack

    state, out = tmp_path / "state", tmp_path / "out"
    first, log1 = start_download(tmp_path, "first", faults.url("/files/owner.bin", size=64 * MiB,
                                                                faults=Faults(rate_bps=MiB // 2)), state, out)
    second = None
    try:
        wait_until(lambda: (state / "server.json").exists(), "the first command's server.json")
        size = 16 * MiB
        second, log2 = start_download(tmp_path, "second", faults.url("/files/guest.bin", size=size,
                                                                      faults=Faults(rate_bps=2 * MiB)), state, out)
        wait_until(lambda: "joined the engine" in log2.read_text(), "the second command to join")
        wait_until(lambda: (out / "guest.bin.part").exists() and (out / "guest.bin.part").stat().st_size > 0,
                   "the joined download's bytes")
        first.send_signal(signal.SIGINT)
        assert finish(first) == 130, log1.read_text()
        assert finish(second) == 0, log2.read_text()
        assert "stopped; continuing here" in log2.read_text()
        assert sha256_of(out / "guest.bin") == content_sha256("/files/guest.bin", size)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    recorded = {}
    for path in (state / "operations").glob("*.msgpack"):
        op = msgpack.unpackb(path.read_bytes(), raw=False)["operation"]
        recorded[Path(op["spec"]["dest"]).name] = op["status"]
    assert recorded == {"owner.bin": "paused", "guest.bin": "success"}
