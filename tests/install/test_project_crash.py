"""kill -9 of ``recovery run`` during a project step: the rerun continues at that step."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path
from typing import Any

from engine.testing import FaultServer, Faults, content_sha256

SIZE = 400_000


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kill_during_step_3_resumes_there(fault_server: FaultServer, ws: Any) -> None:
    """A 5-step project killed with SIGKILL during step 3 reruns only step 3 onward and ends exact."""
    one = fault_server.url("/files/one.bin", size=SIZE)
    two = fault_server.url("/files/two.bin", size=SIZE, faults=Faults(drop_after=150_000, drop_times=1))
    ws.write(
        "crash-test",
        ws.download(one, "models/one.bin", content_sha256("/files/one.bin", SIZE)),
        ws.install("step2"),
        ws.install("step3", sleep=3),
        ws.download(two, "models/two.bin", content_sha256("/files/two.bin", SIZE)),
        ws.install("step5"),
    )
    first = ws.start("--json")
    ws.wait_for_line("step3 started", first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    first.communicate()
    [orphan] = ws.pid_of("step3")
    assert ws.lines() == ["step2", "step3 started"]

    second = ws.run("--json")
    assert second.returncode == 0, second.stderr
    lines = ws.lines()
    assert lines == ["step2", "step3 started", "step3 started", "step3 done", "step5"], lines
    assert not ws.alive(orphan)  # the killed run's step 3 was stopped before step 3 ran again
    assert sha(ws.root / "models" / "one.bin") == content_sha256("/files/one.bin", SIZE)
    assert sha(ws.root / "models" / "two.bin") == content_sha256("/files/two.bin", SIZE)
    paths = fault_server.stats.paths
    assert len(paths["/files/one.bin"].ranges) == 1  # step 1 was not run again
    assert len(paths["/files/two.bin"].ranges) == 2  # one drop, one resume
    events = [json.loads(line) for line in second.stdout.splitlines()]
    steps = {e["step"] for e in events if e["type"] == "progress"}
    assert {3, 4, 5} <= steps and not steps & {1, 2}
    assert events[-1]["type"] == "status" and events[-1]["status"] == "success"
