"""``recovery serve`` as a real process, and the client commands that talk to it (SPEC section 13)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any, Iterator

import httpx
import pytest

from engine._cli import main
from engine.testing import FaultServer, Faults

SECTION_10 = {
    "total_operations", "recovered_operations", "failed_operations", "average_recovery_time_s",
    "retry_attempts", "success_operations", "active_operations", "bytes_downloaded", "bytes_discarded",
    "errors_by_code", "breaker_trips",
}
@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    with server.run_in_thread():
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: Any, start_serve: Any, stop_serve: Any) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("serve")
    server = start_serve(base / "state", base / "root", "--set", "initial_delay_s=30", "--set", "max_delay_s=30",
                         "--set", "jitter=0")
    try:
        yield server
    finally:
        stop_serve(server)


def recovery(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """Run a ``recovery`` command in this process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_serve_prints_the_bound_url_and_token_link(served):
    """With --port 0 the printed link carries the real port and the token; server.json agrees."""
    port = int(served.url.rsplit(":", 1)[1])
    assert port != 0 and served.url.startswith("http://127.0.0.1:")
    assert served.link == f"{served.url}/?token={served.token}"
    info = json.loads((served.state_dir / "server.json").read_text())
    assert info == {"url": served.url, "pid": served.proc.pid}


def test_list_and_status(served, faults, capsys):
    """list and status show a running download, as a table and as JSON."""
    url = faults.url("/files/list.bin", size=400_000, faults=Faults(rate_bps=50_000))
    op = served.submit(url, "list.bin")
    served.wait_status(op["id"], "in_progress")
    code, out, _ = recovery(capsys, "list", "--state-dir", str(served.state_dir))
    assert code == 0 and op["id"] in out and "in_progress" in out and "list.bin" in out
    code, out, _ = recovery(capsys, "list", "--json", "--state-dir", str(served.state_dir))
    assert code == 0 and op["id"] in [o["id"] for o in json.loads(out)]
    code, out, _ = recovery(capsys, "status", op["id"], "--state-dir", str(served.state_dir))
    assert code == 0 and op["id"] in out and "in_progress" in out and "progress" in out
    code, out, _ = recovery(capsys, "status", op["id"], "--json", "--state-dir", str(served.state_dir))
    assert code == 0 and json.loads(out)["spec"]["dest"] == str(served.root / "list.bin")
    assert recovery(capsys, "cancel", op["id"], "--state-dir", str(served.state_dir))[0] == 0


def test_pause_resume_cancel(served, faults, capsys):
    """pause, resume and cancel change the status and exit 0."""
    op = served.submit(faults.url("/files/prc.bin", size=400_000, faults=Faults(rate_bps=50_000)), "prc.bin")
    served.wait_status(op["id"], "in_progress")
    state = ("--state-dir", str(served.state_dir))
    code, out, _ = recovery(capsys, "pause", op["id"], "--json", *state)
    assert code == 0 and json.loads(out)["status"] == "paused"
    code, out, _ = recovery(capsys, "resume", op["id"], *state)
    assert code == 0 and "resume" in out and op["id"] in out
    code, out, _ = recovery(capsys, "cancel", op["id"], "--json", *state)
    assert code == 0 and json.loads(out)["status"] == "cancelled"
    assert not (served.root / "prc.bin.part").exists()


def test_retry_force_and_cancel_recovery(served, faults, capsys):
    """retry, retry --force and cancel-recovery act on a recovering download; a refused one exits 1."""
    op = served.submit(faults.url("/files/busy.bin", size=1000, faults=Faults(status=503)), "busy.bin")
    served.wait_status(op["id"], "recovering")
    state = ("--state-dir", str(served.state_dir))
    code, out, _ = recovery(capsys, "retry", op["id"], "--json", *state)
    assert code == 0 and json.loads(out)["status"] in ("in_progress", "recovering")
    served.wait_status(op["id"], "recovering")
    code, out, _ = recovery(capsys, "retry", op["id"], "--force", "--json", *state)
    assert code == 0 and json.loads(out)["status"] in ("in_progress", "recovering")
    served.wait_status(op["id"], "recovering")
    code, out, _ = recovery(capsys, "cancel-recovery", op["id"], "--json", *state)
    assert code == 0 and json.loads(out)["status"] == "failed"
    assert json.loads(out)["error"]["code"] == "E_SERVER_OVERLOAD"
    code, out, err = recovery(capsys, "cancel-recovery", op["id"], *state)
    assert code == 1 and "E_INVALID_STATE" in err
    code, out, err = recovery(capsys, "cancel-recovery", op["id"], "--json", *state)
    assert code == 1 and json.loads(out)["error"]["code"] == "E_INVALID_STATE"
    assert recovery(capsys, "cancel", op["id"], *state)[0] == 0


def test_retry_refusal_points_to_the_force_flag(served, faults, capsys):
    """retry of a download failed on a 404 exits 1 with E_NOT_RETRYABLE and names `recovery retry ID --force`."""
    op = served.submit(faults.url("/files/gone.bin", size=1000, faults=Faults(status=404)), "gone.bin")
    served.wait_status(op["id"], "failed")
    code, _, err = recovery(capsys, "retry", op["id"], "--state-dir", str(served.state_dir))
    assert code == 1 and "E_NOT_RETRYABLE" in err
    assert f"recovery retry {op['id']} --force" in err and "force_retry" not in err
    code, out, _ = recovery(capsys, "retry", op["id"], "--force", "--json", "--state-dir", str(served.state_dir))
    assert code == 0 and json.loads(out)["status"] in ("in_progress", "pending", "failed")


def test_refusal_exits_1_with_the_code(served, capsys):
    """A control the server refuses exits 1 and prints the code (unknown id: E_NOT_FOUND)."""
    code, _, err = recovery(capsys, "pause", "no-such-op", "--state-dir", str(served.state_dir))
    assert code == 1 and "E_NOT_FOUND" in err


def test_stats(served, capsys):
    """stats prints the section-10 statistics, readable or as JSON."""
    code, out, _ = recovery(capsys, "stats", "--json", "--state-dir", str(served.state_dir))
    assert code == 0 and set(json.loads(out)) == SECTION_10
    code, out, _ = recovery(capsys, "stats", "--state-dir", str(served.state_dir))
    assert code == 0 and "total_operations" in out and "bytes_downloaded" in out


def test_settings_show_change_and_refuse(served, capsys):
    """settings shows and saves KEY=VALUE changes; an invalid value, an unknown name or bad syntax exits 2."""
    state = ("--state-dir", str(served.state_dir))
    code, out, _ = recovery(capsys, "settings", "--json", *state)
    assert code == 0 and json.loads(out)["initial_delay_s"] == 30.0
    code, out, _ = recovery(capsys, "settings", "history_limit=900", "--json", *state)
    assert code == 0 and json.loads(out)["history_limit"] == 900
    assert json.loads((served.state_dir / "settings.json").read_text())["history_limit"] == 900
    code, out, _ = recovery(capsys, "settings", *state)
    assert code == 0 and "history_limit" in out and "900" in out
    code, _, err = recovery(capsys, "settings", "backoff_factor=0.5", *state)
    assert code == 2 and "E_INVALID_INPUT" in err and "backoff_factor" in err
    code, _, err = recovery(capsys, "settings", "max_retries=-1", *state)
    assert code == 2 and "max_retries" in err
    code, _, err = recovery(capsys, "settings", "nosuch=1", *state)
    assert code == 2 and "nosuch" in err
    code, _, err = recovery(capsys, "settings", "no_equals_sign", *state)
    assert code == 2
    code, _, err = recovery(capsys, "settings", f"download_root={served.root.parent}", *state)
    assert code == 1 and "E_FORBIDDEN" in err  # refused, not malformed


def test_no_server_exits_3(tmp_path, capsys):
    """Without a running server (no server.json, or a stale one) client commands exit 3 and say why."""
    state = tmp_path / "state"
    state.mkdir()
    code, _, err = recovery(capsys, "list", "--state-dir", str(state))
    assert code == 3
    assert f"no recovery server is running for state dir {state}" in err and "recovery serve" in err
    (state / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": 1}))
    (state / "token").write_text("t")
    code, _, err = recovery(capsys, "stats", "--state-dir", str(state))
    assert code == 3 and "no recovery server is running" in err


def test_usage_error_exits_2(capsys):
    """A command missing its ID is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as info:
        main(["pause"])
    assert info.value.code == 2


def test_client_as_a_separate_process(served):
    """The installed command line (python -m engine) reaches the server too."""
    result = subprocess.run([sys.executable, "-m", "engine", "stats", "--json", "--state-dir", str(served.state_dir)],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert "total_operations" in json.loads(result.stdout)


def test_ctrl_c_stops_cleanly_with_130(tmp_path, start_serve, stop_serve):
    """Ctrl-C (SIGINT) shuts serve down gracefully: exit 130, server.json removed, state kept."""
    server = start_serve(tmp_path / "state", tmp_path / "root")
    assert (tmp_path / "state" / "server.json").exists()
    assert stop_serve(server, signal.SIGINT) == 130
    assert not (tmp_path / "state" / "server.json").exists()
    assert (tmp_path / "state" / "token").exists()


def test_sigterm_stops_cleanly_with_0(tmp_path, start_serve, stop_serve):
    """SIGTERM (a service manager's stop) shuts serve down gracefully with exit 0."""
    server = start_serve(tmp_path / "state", tmp_path / "root")
    assert stop_serve(server, signal.SIGTERM) == 0
    assert not (tmp_path / "state" / "server.json").exists()


def test_serve_refuses_a_state_dir_in_use(served):
    """A second serve on the same state dir fails at once with a clear message (exit 1)."""
    result = subprocess.run([sys.executable, "-m", "engine", "serve", "--port", "0", "--state-dir",
                             str(served.state_dir)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert "already using the state directory" in result.stderr


def test_serve_usage_errors_exit_2(tmp_path, capsys):
    """A bad --set or port is a usage error (exit 2) before anything starts."""
    assert recovery(capsys, "serve", "--set", "nonsense=1", "--state-dir", str(tmp_path))[0] == 2
    assert recovery(capsys, "serve", "--port", "70000", "--state-dir", str(tmp_path))[0] == 2


def test_binding_beyond_loopback_warns(tmp_path, start_serve, stop_serve):
    """--host 0.0.0.0 works but prints a warning; the printed link still uses the loopback address."""
    server = start_serve(tmp_path / "state", tmp_path / "root", "--host", "0.0.0.0")
    try:
        assert server.url.startswith("http://127.0.0.1:")
        response = httpx.get(f"{server.url}/api/settings", headers={"Authorization": f"Bearer {server.token}"})
        assert response.status_code == 200
    finally:
        stop_serve(server)
    stderr = next(tmp_path.glob("serve-*.stderr")).read_text()
    assert "WARNING: listening on 0.0.0.0" in stderr
