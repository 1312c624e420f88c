"""The project kind through open_engine: real downloads from the fault server, real commands."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import DownloadSpec, InstallSpec, ProjectSpec, RefusedError, Settings, Status, open_engine
from engine.testing import INLINE_DISK
from engine._convert import converter
from engine._engine import builtin_kinds
from engine.testing import FaultServer, Faults, content_sha256

PY = sys.executable
SIZE = 300_000


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    srv = FaultServer()
    async with srv.running():
        yield srv


def fast(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(**{"initial_delay_s": 0.05, "jitter": 0.0, "max_delay_s": 0.2,
                       "download_root": str(tmp_path), **kw})


def append(counter: Path, line: str) -> InstallSpec:
    """An install step that appends ``line`` to the counter file."""
    return InstallSpec(argv=[PY, "-c", f"open({str(counter)!r}, 'a').write({line + chr(10)!r})"])


def lines(counter: Path) -> list[str]:
    return counter.read_text().splitlines() if counter.exists() else []


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def run_watching(eng: Any, spec: Any) -> list[Any]:
    """Submit ``spec`` and collect its events as they happen (unread progress events coalesce)."""
    events: list[Any] = []
    async with eng.subscribe() as sub, trio.open_nursery() as nursery:

        async def collect() -> None:
            async for event in sub:
                events.append(event)

        nursery.start_soon(collect)
        op = await eng.submit(spec)
        await eng.wait(op.id)
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return events


async def settle(eng: Any, op_id: str, *statuses: Status, within: float = 20) -> Any:
    with trio.fail_after(within):
        while eng.get(op_id).status not in statuses:
            await trio.sleep(0.01)
    return eng.get(op_id)


async def test_steps_run_in_order_with_step_progress(server: FaultServer, tmp_path: Path) -> None:
    """Downloads and installs run in order; progress events carry step, steps_done and steps_total."""
    counter = tmp_path / "count"
    server.add_file("/a.bin", size=SIZE, faults=Faults(drop_after=100_000, drop_times=1))
    server.add_file("/b.bin", size=SIZE, faults=Faults(rate_bps=1_000_000))
    spec = ProjectSpec(name="p", steps=[
        DownloadSpec(url=server.base_url + "/a.bin", dest=str(tmp_path / "m" / "a.bin"),
                     sha256=content_sha256("/a.bin", SIZE)),
        append(counter, "step2"),
        DownloadSpec(url=server.base_url + "/b.bin", dest=str(tmp_path / "m" / "b.bin")),
        append(counter, "step4"),
    ])
    with trio.fail_after(30):
        async with open_engine(tmp_path / "state", fast(tmp_path), disk=INLINE_DISK) as eng:
            events = await run_watching(eng, spec)
            final = eng.list()[-1]
    assert final.status is Status.SUCCESS and final.kind == "project", final.error
    assert final.retries_total == 1 and final.steps_done == 4 and final.steps_total == 4
    assert sha(tmp_path / "m" / "a.bin") == content_sha256("/a.bin", SIZE)
    assert sha(tmp_path / "m" / "b.bin") == content_sha256("/b.bin", SIZE)
    assert lines(counter) == ["step2", "step4"]
    progress = [e.to_dict() for e in events if e.type == "progress"]
    assert progress and all({"step", "steps_done", "steps_total"} <= p.keys() for p in progress)
    assert all(p["steps_total"] == 4 and p["steps_done"] == p["step"] - 1 for p in progress[:-1])
    steps_seen = [p["step"] for p in progress]
    assert steps_seen == sorted(steps_seen) and {1, 2, 3, 4} <= set(steps_seen)
    assert any(p["step"] == 3 and p["bytes_total"] == SIZE for p in progress)
    [submitted] = [e.to_dict() for e in events if e.type == "submitted"]
    assert [s["kind"] for s in submitted["spec"]["steps"]] == ["download", "install", "download", "install"]


async def test_each_step_has_its_own_retry_budget(tmp_path: Path) -> None:
    """Two steps each failing twice on the network succeed with max_retries=2; a finished step resets the counter."""
    work = tmp_path / "w"
    work.mkdir()
    flaky = tmp_path / "flaky.py"
    flaky.write_text(
        "import sys\nfrom pathlib import Path\n"
        "p = Path(sys.argv[1]); n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1))\n"
        "if n < 2:\n    print('fatal: early EOF'); sys.exit(128)\n"
    )
    spec = ProjectSpec(name="budget", steps=[
        InstallSpec(argv=[PY, str(flaky), "one"], cwd=str(work)),
        InstallSpec(argv=[PY, str(flaky), "two"], cwd=str(work)),
    ])
    with trio.fail_after(30):
        async with open_engine(tmp_path / "state", fast(tmp_path, max_retries=2), disk=INLINE_DISK) as eng:
            events = await run_watching(eng, spec)
            final = eng.list()[-1]
    assert final.status is Status.SUCCESS and final.retries_total == 4, final.error
    assert (work / "one").read_text() == "3" and (work / "two").read_text() == "3"
    retries = [(e["attempt"], e["error"]["message"][:8]) for e in events if e.type == "retry_scheduled"]
    assert retries == [(1, "step 1/2"), (2, "step 1/2"), (1, "step 2/2"), (2, "step 2/2")]
    statuses = [e["status"] for e in events if e.type == "status"]
    # every retried step is in_progress again once it starts running (SPEC 2.1)
    assert statuses == ["in_progress"] + ["recovering", "in_progress"] * 4 + [
        "success"], statuses


async def test_failed_step_is_named_and_force_retry_continues_there(server: FaultServer, tmp_path: Path) -> None:
    """A failing install fails the project naming the step; force_retry resumes at that step only."""
    counter = tmp_path / "count"
    gate = tmp_path / "broken"
    gate.touch()
    server.add_file("/a.bin", size=SIZE)
    spec = ProjectSpec(name="p", steps=[
        DownloadSpec(url=server.base_url + "/a.bin", dest=str(tmp_path / "a.bin")),
        InstallSpec(argv=[PY, "-c", f"import os, sys; print('missing dependency'); "
                                    f"sys.exit(1 if os.path.exists({str(gate)!r}) else 0)"]),
        append(counter, "step3"),
    ])
    with trio.fail_after(30):
        async with open_engine(tmp_path / "state", fast(tmp_path), disk=INLINE_DISK) as eng:
            op = await eng.submit(spec)
            failed = await eng.wait(op.id)
            assert failed.status is Status.FAILED and failed.retries_total == 0
            assert failed.error is not None and failed.error.code == "E_INSTALL_FAILED"
            assert failed.error.message.startswith("step 2/3 (install):")
            assert failed.output_tail == ["missing dependency"]
            gate.unlink()
            await eng.force_retry(op.id)
            final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS
    assert len(server.stats.paths["/a.bin"].ranges) == 1  # the finished download did not run again
    assert lines(counter) == ["step3"]


async def test_pause_resumes_the_running_download_step_from_its_offset(server: FaultServer, tmp_path: Path) -> None:
    """Pausing during a download step keeps its .part; resuming continues that step from the offset."""
    counter = tmp_path / "count"
    server.add_file("/slow.bin", size=SIZE, faults=Faults(rate_bps=200_000))
    dest = tmp_path / "slow.bin"
    spec = ProjectSpec(name="p", steps=[
        append(counter, "step1"),
        DownloadSpec(url=server.base_url + "/slow.bin", dest=str(dest), sha256=content_sha256("/slow.bin", SIZE)),
        append(counter, "step3"),
    ])
    with trio.fail_after(30):
        async with open_engine(tmp_path / "state", fast(tmp_path, checkpoint_interval_s=0.1), disk=INLINE_DISK) as eng:
            op = await eng.submit(spec)
            with trio.fail_after(10):
                while eng.get(op.id).step != 2 or eng.get(op.id).bytes_done < 100_000:
                    await trio.sleep(0.01)
            await eng.pause(op.id)
            paused = await settle(eng, op.id, Status.PAUSED)
            assert paused.steps_done == 1
            kept = dest.with_name("slow.bin.part").stat().st_size
            assert 0 < kept < SIZE
            await eng.resume(op.id)
            final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS and sha(dest) == content_sha256("/slow.bin", SIZE)
    ranges = server.stats.paths["/slow.bin"].ranges
    assert len(ranges) == 2 and ranges[1][0] is not None and ranges[1][0] >= kept - 100_000
    assert lines(counter) == ["step1", "step3"]


async def test_cancel_discards_only_the_running_step(server: FaultServer, tmp_path: Path) -> None:
    """Cancel deletes the running download's .part and the snapshot; earlier steps' files stay."""
    server.add_file("/done.bin", size=SIZE)
    server.add_file("/slow.bin", size=SIZE, faults=Faults(rate_bps=100_000))
    done, slow = tmp_path / "done.bin", tmp_path / "slow.bin"
    spec = ProjectSpec(name="p", steps=[
        DownloadSpec(url=server.base_url + "/done.bin", dest=str(done)),
        DownloadSpec(url=server.base_url + "/slow.bin", dest=str(slow)),
    ])
    with trio.fail_after(30):
        async with open_engine(tmp_path / "state", fast(tmp_path, checkpoint_interval_s=0.1), disk=INLINE_DISK) as eng:
            op = await eng.submit(spec)
            with trio.fail_after(10):
                while not slow.with_name("slow.bin.part").exists() or eng.get(op.id).bytes_done < 50_000:
                    await trio.sleep(0.01)
            cancelled = await eng.cancel(op.id)
            assert cancelled.status is Status.CANCELLED
    assert done.stat().st_size == SIZE
    assert not slow.exists() and not slow.with_name("slow.bin.part").exists()
    assert not list((tmp_path / "state" / "operations").iterdir())


async def test_restart_continues_at_the_first_unfinished_step(server: FaultServer, tmp_path: Path) -> None:
    """An engine stopped during step 3 resumes there on the next start; steps 1-2 do not run again."""
    counter = tmp_path / "count"
    server.add_file("/a.bin", size=SIZE)
    spec = ProjectSpec(name="p", steps=[
        DownloadSpec(url=server.base_url + "/a.bin", dest=str(tmp_path / "a.bin")),
        append(counter, "step2"),
        InstallSpec(argv=[PY, "-c", f"import time; open({str(counter)!r}, 'a').write('step3 started\\n'); "
                                    "time.sleep(1.0)"]),
        append(counter, "step4"),
    ])
    with trio.fail_after(30):
        async with open_engine(tmp_path / "state", fast(tmp_path), disk=INLINE_DISK) as eng:
            op = await eng.submit(spec)
            while "step3 started" not in lines(counter):
                await trio.sleep(0.01)
        async with open_engine(tmp_path / "state", fast(tmp_path), disk=INLINE_DISK) as eng:
            loaded = eng.get(op.id)  # the view knows the step before any progress report
            final = await eng.wait(op.id)
    assert (loaded.step, loaded.steps_done, loaded.steps_total) == (3, 2, 4)
    assert final.status is Status.SUCCESS
    assert lines(counter) == ["step2", "step3 started", "step3 started", "step4"]
    assert len(server.stats.paths["/a.bin"].ranges) == 1


def test_validation_names_the_step_and_field(tmp_path: Path) -> None:
    """Every step is validated by its own kind; refusals name steps[i].field."""
    kind = builtin_kinds().get("project")
    settings = fast(tmp_path)
    ok = DownloadSpec(url="http://h/a.bin", dest=str(tmp_path / "a.bin"))
    cases = [
        (ProjectSpec(name="p", steps=[ok, InstallSpec(argv=["x"]), DownloadSpec(url="ftp://h/x", dest="x")]),
         "steps[2].url"),
        (ProjectSpec(name="p", steps=[InstallSpec(argv="pip install x")]), "steps[0].argv"),  # type: ignore[arg-type]
        (ProjectSpec(name="p", steps=[ok, DownloadSpec(url="http://h/b", dest=str(tmp_path / "a.bin"))]),
         "steps[1].dest"),
        (ProjectSpec(name="p", steps=[ok, InstallSpec(argv=["x"], timeout_s=-1)]), "steps[1].timeout_s"),
        (ProjectSpec(name="p", steps=[]), "steps"),
        (ProjectSpec(name=" ", steps=[ok]), "name"),
        (ProjectSpec(name="p", steps=[ok, ProjectSpec(name="q", steps=[ok])]), "steps[1]"),  # type: ignore[list-item]
    ]
    for spec, field in cases:
        with pytest.raises(RefusedError) as info:
            kind.validate(spec, settings)
        assert info.value.field == field, (field, info.value.message)
        assert info.value.code == "E_INVALID_INPUT"
    with pytest.raises(RefusedError, match=r"^steps\[2\]: only http and https"):
        kind.validate(cases[0][0], settings)


def test_scope_is_the_current_steps_scope_and_the_spec_round_trips(tmp_path: Path) -> None:
    """The breaker scope follows the running step, and a project spec survives the snapshot converter."""
    kind = builtin_kinds().get("project")
    spec = kind.validate(ProjectSpec(name="p", steps=[
        DownloadSpec(url="https://models.example:8443/a.bin", dest=str(tmp_path / "a.bin"), headers={"X": "1"}),
        InstallSpec(argv=["pip", "install", "x"], scope="pypi", env={"A": "b"}, timeout_s=5),
        InstallSpec(argv=["true"]),
    ]), fast(tmp_path))
    assert [kind.scope(spec, {"done": n}) for n in range(4)] == ["models.example:8443", "pypi", None, None]
    assert converter.structure(converter.unstructure(spec), ProjectSpec) == spec
    assert kind.resource_key(spec) == "project:p"


async def test_each_step_asks_its_own_scope_s_breaker(tmp_path, autojump_clock) -> None:
    """A project whose next step's scope has an open breaker waits there without spending retries."""
    from engine import InstallSpec, ProjectSpec, Settings, Status, open_engine
    from engine.testing._scripted import ScriptedKind, ScriptedSpec

    kind = ScriptedKind()
    # The autojump clock runs ahead while the real `sh` child runs, so the breaker's open period (and
    # the wait below) are far beyond anything a loaded machine could let pass: the breaker stays open.
    settings = Settings(breaker_failure_threshold=1, initial_delay_s=1e6, max_delay_s=1e9,
                        breaker_reset_timeout_s=1e9)
    marker = tmp_path / "ran"
    step = InstallSpec(argv=["true"], scope="index")
    async with open_engine(tmp_path / "state", settings, kinds=[kind], disk=INLINE_DISK) as eng:
        opener = await eng.submit(ScriptedSpec(name="opener", script=["fail:E_NET_UNREACHABLE", "ok"],
                                               scope="index"))
        while eng.get(opener.id).status is not Status.RECOVERING:
            await trio.sleep(0.1)
        [state] = [b for b in await eng.breakers() if b.scope == "index"]
        assert state.state == "open"
        project = await eng.submit(ProjectSpec(name="p", steps=[
            InstallSpec(argv=["sh", "-c", f"touch {marker}"], scope="other"),
            step,
        ]))
        with trio.fail_after(1e8):
            while not marker.exists():
                await trio.sleep(0.1)
            while eng.get(project.id).error is None or eng.get(project.id).error.code != "E_CIRCUIT_OPEN":
                await trio.sleep(0.1)
        view = eng.get(project.id)
        assert view.status is Status.RECOVERING and view.attempt == 0
        assert (view.step, view.steps_done, view.steps_total) == (2, 1, 2)
        await eng.cancel(project.id)
