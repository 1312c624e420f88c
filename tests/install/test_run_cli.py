"""``recovery run PROJECT.toml`` as a user runs it: exit codes, Ctrl-C, take-over, the example project."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.testing import FaultServer, content_sha256

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_validation_errors_name_the_step_and_field(ws: Any) -> None:
    """A mistyped field, or a value a kind refuses, is a usage error (exit 2) naming steps[i].field."""
    ws.project.write_text('name = "p"\n[[steps]]\nkind = "install"\nargv = ["true"]\n'
                          '[[steps]]\nkind = "download"\nurll = "https://example.org/x"\n')
    typo = ws.run()
    assert typo.returncode == 2 and "steps[1]: unknown field 'urll'" in typo.stderr
    ws.project.write_text('name = "p"\n[[steps]]\nkind = "install"\nargv = ["true"]\n'
                          '[[steps]]\nkind = "download"\nurl = "ftp://example.org/x"\ndest = "x"\n')
    scheme = ws.run()
    assert scheme.returncode == 2 and "steps[1]: only http and https" in scheme.stderr
    assert "(field: steps[1].url)" in scheme.stderr
    missing = subprocess.run([PY, "-m", "engine", "run", str(ws.root / "nope.toml"), "--state-dir", str(ws.state)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such project file" in missing.stderr
    assert not ws.lines()


def test_rerun_of_a_finished_project_reports_it_complete(fault_server: FaultServer, ws: Any) -> None:
    """A succeeded project run again prints "already complete", runs nothing and exits 0; --restart reruns it."""
    url = fault_server.url("/files/a.bin", size=10_000)
    ws.write("done-once", ws.install("step1"), ws.download(url, "a.bin"))
    first = ws.run()
    assert first.returncode == 0, first.stderr
    again = ws.run()
    assert again.returncode == 0 and "already complete" in again.stderr
    assert ws.lines() == ["step1"] and len(fault_server.stats.paths["/files/a.bin"].ranges) == 1
    restarted = ws.run("--restart")
    assert restarted.returncode == 0 and ws.lines() == ["step1", "step1"]


def test_ctrl_c_exits_130_and_the_rerun_resumes_at_the_step(ws: Any) -> None:
    """Ctrl-C during step 2 pauses (its process group stopped) and exits 130; the rerun continues at step 2."""
    ws.write("interrupted", ws.install("step1"), ws.install("step2", sleep=1), ws.install("step3"))
    run = ws.start()
    ws.wait_for_line("step2 started", run)
    run.send_signal(signal.SIGINT)
    _out, err = run.communicate(timeout=20)
    assert run.returncode == 130, err
    assert "paused" in err
    [pid] = ws.pid_of("step2")
    assert not ws.alive(pid)  # pausing stopped the running step's command
    assert ws.lines() == ["step1", "step2 started"]
    rerun = ws.run()
    assert rerun.returncode == 0, rerun.stderr
    assert ws.lines() == ["step1", "step2 started", "step2 started", "step2 done", "step3"]


def test_failed_step_exits_1_and_a_changed_file_needs_restart(ws: Any) -> None:
    """A failing step exits 1 with its error and output; an edited file is refused unless --restart."""
    ws.project.write_text(
        'name = "fixable"\n' + ws.install("step1") +
        '[[steps]]\nkind = "install"\nargv = ["' + PY + '", "-c", "import sys; print(\'boom\'); sys.exit(4)"]\n'
    )
    failed = ws.run()
    assert failed.returncode == 1
    assert "E_INSTALL_FAILED" in failed.stderr and "step 2/2" in failed.stderr and "boom" in failed.stderr
    again = ws.run()  # unchanged: the recorded run is retried at step 2, and fails the same way
    assert again.returncode == 1 and ws.lines() == ["step1"]
    ws.write("fixable", ws.install("step1"), ws.install("step2"))
    changed = ws.run()
    assert changed.returncode == 2 and "--restart" in changed.stderr
    fixed = ws.run("--restart")
    assert fixed.returncode == 0, fixed.stderr
    assert ws.lines() == ["step1", "step1", "step2"]


def test_the_example_project_runs_offline(ws: Any) -> None:
    """examples/project.toml succeeds against a local fault server, recovering its faults; downloads exact."""
    examples = ws.root / "examples"
    shutil.copytree(REPO / "examples", examples, ignore=shutil.ignore_patterns("out"))
    ws.project = examples / "project.toml"
    server = subprocess.Popen([PY, "-m", "engine.testing", "serve", "--port", "0"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        base = server.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:")
        ws.project.write_text(ws.project.read_text().replace("http://127.0.0.1:8799", base))
        result = ws.run()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    assert "example-workspace: done after 5 retries" in result.stderr
    out = examples / "out"
    checkpoint, vae = out / "models" / "checkpoints" / "checkpoint.safetensors", out / "models" / "vae" / "vae.safetensors"
    assert sha(checkpoint) == content_sha256("/files/checkpoint.safetensors", 6291456)
    assert sha(vae) == content_sha256("/files/vae.safetensors", 2097152)
    assert (out / "app" / "installed.txt").read_text() == "torch\nsafetensors\n"
