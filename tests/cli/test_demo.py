"""``recovery demo``: three faulty downloads that all recover."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_json_shows_three_recoveries(tmp_path: Path) -> None:
    """The demo exits 0; every download goes through recovering (its own fault) and ends in success."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "250"}  # the demo's work dir lands in tmp_path
    env.pop("RECOVERY_STATE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "engine", "demo", "--json"], capture_output=True, text=True,
                          env=env, timeout=600)  # a hang guard; the demo's duration is not asserted
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is one JSON event
    names = {e["op_id"]: e["spec"]["url"].rsplit("/", 1)[-1] for e in events if e["type"] == "submitted"}
    assert sorted(names.values()) == ["checkpoint.safetensors", "lora.safetensors", "vae.safetensors"]
    by_name: dict[str, list[dict]] = {name: [] for name in names.values()}
    for event in events:
        if event.get("op_id") in names:
            by_name[names[event["op_id"]]].append(event)
    expected_fault = {
        "checkpoint.safetensors": "E_NET_INTERRUPTED",  # dropped connections
        "vae.safetensors": "E_SERVER_OVERLOAD",  # 503 with Retry-After
        "lora.safetensors": "E_NET_TIMEOUT",  # a stall
    }
    for name, evs in by_name.items():
        statuses = [e for e in evs if e["type"] == "status"]
        recovering = [e for e in statuses if e["status"] == "recovering"]
        assert recovering, f"{name} never recovered: {[e['status'] for e in statuses]}"
        assert {e["error"]["code"] for e in recovering} == {expected_fault[name]}
        assert statuses[-1]["status"] == "success", name
        assert any(e["type"] == "retry_scheduled" for e in evs)
        assert any(e["type"] == "progress" for e in evs)
    assert not list(tmp_path.iterdir()), "the demo left files behind"


def test_demo_introduction_fits_80_columns(tmp_path: Path) -> None:
    """What the demo says before it starts (the files and their faults) fits 80 columns; all three end done.

    The live lines after it are a log's lines off a terminal (on one, tests/cli/test_display.py fits them)."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "80"}
    env.pop("RECOVERY_STATE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "engine", "demo"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    intro = lines[:next(i for i, line in enumerate(lines) if " -> " in line)]
    assert len(intro) >= 5 and [line for line in intro if len(line) > 80] == [], proc.stderr
    assert sum("done after" in line for line in lines) == 3, proc.stderr
    assert "every file is byte-exact" in proc.stderr
