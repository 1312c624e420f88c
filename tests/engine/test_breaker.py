"""The shared circuit breaker and the concurrency limits (SPEC sections 5 and 11)."""

from __future__ import annotations

import trio
import trio.testing

from engine import DownloadSpec, Settings, Status, open_engine
from engine.testing import INLINE_DISK
from engine.testing._scripted import ScriptedKind, ScriptedSpec
from engine.testing import FaultServer, Faults, content_sha256

KIB = 1024


def sha256_file(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


async def start_server(nursery: trio.Nursery, host: str = "127.0.0.1") -> FaultServer:
    server = FaultServer(host=host)
    await nursery.start(server.serve)
    return server


async def test_503_host_opens_breaker_and_waiters_spend_no_retries(tmp_path, autojump_clock) -> None:
    """20 downloads against a 503 host: the breaker opens after 5 failures, the rest wait without
    spending retries, each half-open probe is one request, and all complete once the host recovers."""
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        paths = [f"/m{i:02d}.bin" for i in range(20)]
        for p in paths:
            server.add_file(p, size=64 * KIB, faults=Faults(status=503))
        settings = Settings(download_root=str(tmp_path), jitter=0.0)
        async with open_engine(tmp_path / "state", settings, disk=INLINE_DISK) as eng:
            async with eng.subscribe() as sub:
                ops = [await eng.submit(DownloadSpec(url=server.base_url + p, dest=f"out{p}")) for p in paths]
                # wait until the breaker opened
                while not [b for b in await eng.breakers() if b.state == "open"]:
                    await trio.sleep(0.1)
                opened_at = trio.current_time()
                import time as _time

                waiting_now = [eng.get(op.id) for op in ops]
                circuit = [v for v in waiting_now if v.error and v.error.code == "E_CIRCUIT_OPEN"]
                assert circuit and all(_time.time() + 25 < v.next_retry_at <= _time.time() + 31 for v in circuit)
                # the 5th failure opened it; the attempt in flight beside it (max_per_host=2) was already sent
                before = server.stats.requests
                assert before == 6
                [state] = await eng.breakers()
                assert state.state == "open" and state.scope == server.base_url.split("//")[1]
                # while open: no request at all, waiters are recovering with E_CIRCUIT_OPEN and keep their budget
                await trio.sleep(29)
                assert server.stats.requests == before
                views = [eng.get(op.id) for op in ops]
                assert all(v.status is Status.RECOVERING for v in views)
                waiting = [v for v in views if v.error and v.error.code == "E_CIRCUIT_OPEN"]
                assert len(waiting) >= 15
                assert all(v.attempt == 0 for v in waiting if v.retries_total == 0)
                assert sum(v.retries_total for v in views) == before
                # the first probe (at 30 s) is exactly one request; it fails: open again for 60 s
                await trio.sleep(2)
                assert server.stats.requests == before + 1
                await trio.sleep(50)
                assert server.stats.requests == before + 1
                # the host recovers; the next probe (at 30 + 60 s) succeeds and everyone proceeds
                for p in paths:
                    server.add_file(p, size=64 * KIB)
                finals = [await eng.wait(op.id) for op in ops]
                events = sub.drain()
        nursery.cancel_scope.cancel()
    assert all(f.status is Status.SUCCESS for f in finals)
    for p in paths:
        assert sha256_file(tmp_path / f"out{p}") == content_sha256(p, 64 * KIB)
    transitions = [(e["previous"], e["state"]) for e in (ev.to_dict() for ev in events) if e["type"] == "breaker"]
    assert transitions[-4:] == [("open", "half_open"), ("half_open", "open"), ("open", "half_open"),
                                ("half_open", "closed")]
    assert eng.statistics().breaker_trips == 2
    # retries spent: the failures before opening + 1 failed probe; nobody else spent any
    assert sum(f.retries_total for f in finals) == 7
    assert trio.current_time() - opened_at >= 89  # 30 s open, failed probe, 60 s open, probe


async def test_404_storm_never_opens_the_breaker(tmp_path, autojump_clock) -> None:
    """Failures that are not retry-worthy (404) never count toward opening."""
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        settings = Settings(download_root=str(tmp_path))
        async with open_engine(tmp_path / "state", settings, disk=INLINE_DISK) as eng:
            async with eng.subscribe() as sub:
                ops = []
                for i in range(20):
                    server.add_file(f"/gone{i}", size=10, faults=Faults(status=404))
                    ops.append(await eng.submit(DownloadSpec(url=f"{server.base_url}/gone{i}", dest=f"g{i}")))
                finals = [await eng.wait(op.id) for op in ops]
                events = sub.drain()
            [state] = await eng.breakers()
        nursery.cancel_scope.cancel()
    assert all(f.status is Status.FAILED and f.error.code == "E_HTTP_CLIENT" for f in finals)
    assert state.state == "closed" and state.consecutive_failures == 0
    assert not [e for e in events if e.type == "breaker"]
    assert server.stats.requests == 20


async def test_two_hosts_are_independent(tmp_path, autojump_clock) -> None:
    """A host in trouble opens only its own breaker; another host's downloads go on."""
    async with trio.open_nursery() as nursery:
        bad = await start_server(nursery, "127.0.0.1")
        good = await start_server(nursery, "127.0.0.2")
        for i in range(6):
            bad.add_file(f"/b{i}", size=1000, faults=Faults(status=503))
            good.add_file(f"/g{i}", size=50 * KIB)
        settings = Settings(download_root=str(tmp_path), max_concurrent=4)
        async with open_engine(tmp_path / "state", settings, disk=INLINE_DISK) as eng:
            bad_ops = [await eng.submit(DownloadSpec(url=f"{bad.base_url}/b{i}", dest=f"b{i}")) for i in range(6)]
            good_ops = [await eng.submit(DownloadSpec(url=f"{good.base_url}/g{i}", dest=f"g{i}"))
                        for i in range(6)]
            finals = [await eng.wait(op.id) for op in good_ops]
            states = {s.scope.split(":")[0]: s.state for s in await eng.breakers()}
            bad_views = [eng.get(op.id) for op in bad_ops]
        nursery.cancel_scope.cancel()
    assert all(f.status is Status.SUCCESS for f in finals)
    assert states == {"127.0.0.1": "open", "127.0.0.2": "closed"}
    assert all(v.status is Status.RECOVERING for v in bad_views)


async def test_connections_never_exceed_limits_even_after_live_change(tmp_path, autojump_clock) -> None:
    """Simultaneous connections stay within max_concurrent and max_per_host, before and after a live change."""
    peak_total = 0

    async with trio.open_nursery() as nursery:
        a = await start_server(nursery, "127.0.0.1")
        b = await start_server(nursery, "127.0.0.2")

        async def sample() -> None:
            nonlocal peak_total
            while True:
                peak_total = max(peak_total, a.stats.connections + b.stats.connections)
                await trio.sleep(0.01)

        nursery.start_soon(sample)
        for i in range(8):
            a.add_file(f"/a{i}", size=256 * KIB, faults=Faults(rate_bps=64 * KIB))
            b.add_file(f"/b{i}", size=256 * KIB, faults=Faults(rate_bps=64 * KIB))
        settings = Settings(download_root=str(tmp_path), max_concurrent=3, max_per_host=2)
        async with open_engine(tmp_path / "state", settings, disk=INLINE_DISK) as eng:
            ops = []
            for i in range(8):
                ops.append(await eng.submit(DownloadSpec(url=f"{a.base_url}/a{i}", dest=f"a{i}")))
                ops.append(await eng.submit(DownloadSpec(url=f"{b.base_url}/b{i}", dest=f"b{i}")))
            await trio.sleep(10)
            before = (peak_total, a.stats.peak_connections, b.stats.peak_connections)
            # a paused operation frees its slot at once: another starts
            running = [o for o in eng.list() if o.status is Status.IN_PROGRESS]
            assert len(running) == 3
            await eng.pause(running[0].id)
            await trio.sleep(0.01)
            assert len([o for o in eng.list() if o.status is Status.IN_PROGRESS]) == 3
            # the server notices the paused op's closed socket at its next paced send (<= 0.1 s)
            await trio.sleep(0.5)
            await eng.resume(running[0].id)
            a.reset_stats(), b.reset_stats()
            peak_total = 0
            await eng.update_settings(max_concurrent=6, max_per_host=3)
            await trio.sleep(5)
            after = (peak_total, a.stats.peak_connections, b.stats.peak_connections)
            finals = [await eng.wait(op.id) for op in ops]
        nursery.cancel_scope.cancel()
    assert before[0] == 3 and before[1] <= 2 and before[2] <= 2
    assert after[0] == 6 and after[1] == 3 and after[2] == 3
    assert all(f.status is Status.SUCCESS for f in finals)


def scripted(name: str, *script: str, scope: str = "down") -> ScriptedSpec:
    return ScriptedSpec(name=name, script=list(script), scope=scope)


async def test_open_period_schedule_on_the_actor_clock(tmp_path, autojump_clock) -> None:
    """Half-open comes 30, 60, 120, then (capped) 200 s after each opening."""
    kind = ScriptedKind()
    settings = Settings(breaker_failure_threshold=1, max_retries=20, initial_delay_s=0.001, max_delay_s=200,
                        jitter=0.0)
    stamps: list[tuple[str, float]] = []
    async with open_engine(tmp_path / "state", settings, kinds=[kind], disk=INLINE_DISK) as eng:
        async with eng.subscribe() as sub:

            async def record() -> None:
                async for ev in sub:
                    if ev.type == "breaker":
                        stamps.append((ev["state"], trio.current_time()))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(record)
                op = await eng.submit(scripted("x", *(["fail:E_NET_UNREACHABLE"] * 5), "ok"))
                await eng.wait(op.id)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
    opens = [t for s, t in stamps if s == "open"]
    halves = [t for s, t in stamps if s == "half_open"]
    gaps = [round(h - o) for o, h in zip(opens, halves)]
    assert gaps == [30, 60, 120, 200, 200]
    assert stamps[-1][0] == "closed"


async def test_probe_goes_to_the_longest_waiting_op(tmp_path, autojump_clock) -> None:
    """When half-open, the operation that has waited longest makes the probe."""
    kind = ScriptedKind()
    settings = Settings(breaker_failure_threshold=1, initial_delay_s=1000)
    async with open_engine(tmp_path / "state", settings, kinds=[kind], disk=INLINE_DISK) as eng:
        first = await eng.submit(scripted("first", "fail:E_NET_UNREACHABLE", "ok"))
        await trio.sleep(1)
        waiters = []
        for name in ("w1", "w2", "w3"):
            waiters.append(await eng.submit(scripted(name, "ok")))
            await trio.sleep(1)
        assert all(eng.get(w.id).error.code == "E_CIRCUIT_OPEN" for w in waiters)
        await trio.sleep(25)  # half-open comes 30 s after opening
        assert list(kind.started) == ["first"]
        await trio.sleep(2)
        started = list(kind.started)
        assert started[:2] == ["first", "w1"] and set(started[2:]) == {"w2", "w3"}  # w1 probed, then the rest
        finals = [await eng.wait(w.id) for w in waiters]
        assert all(f.status is Status.SUCCESS and f.retries_total == 0 for f in finals)
        assert eng.get(first.id).status is Status.RECOVERING  # still in its own 1000 s backoff


async def test_force_retry_passes_an_open_breaker(tmp_path, autojump_clock) -> None:
    """force_retry lets one attempt through an open breaker."""
    kind = ScriptedKind()
    settings = Settings(breaker_failure_threshold=1)
    async with open_engine(tmp_path / "state", settings, kinds=[kind], disk=INLINE_DISK) as eng:
        await eng.submit(scripted("opener", "fail:E_NET_UNREACHABLE", "ok"))
        await trio.sleep(1)
        waiter = await eng.submit(scripted("waiter", "ok"))
        await trio.sleep(1)
        assert eng.get(waiter.id).status is Status.RECOVERING and "waiter" not in kind.started
        await eng.force_retry(waiter.id)
        assert (await eng.wait(waiter.id)).status is Status.SUCCESS
        assert trio.current_time() < 10


async def test_breaker_state_is_not_persisted(tmp_path, autojump_clock) -> None:
    """After a restart every scope starts closed; the operations' retry counters are kept."""
    settings = Settings(breaker_failure_threshold=2, initial_delay_s=1000)
    async with open_engine(tmp_path / "state", settings, kinds=[ScriptedKind()], disk=INLINE_DISK) as eng:
        a = await eng.submit(scripted("a", "fail:E_NET_UNREACHABLE", "ok"))
        b = await eng.submit(scripted("b", "fail:E_NET_UNREACHABLE", "ok"))
        await trio.sleep(1)
        assert [s.state for s in await eng.breakers()] == ["open"]
    kind = ScriptedKind()
    async with open_engine(tmp_path / "state", settings, kinds=[kind], disk=INLINE_DISK) as eng:
        assert await eng.breakers() == []
        finals = [await eng.wait(a.id), await eng.wait(b.id)]
        assert all(f.status is Status.SUCCESS and f.attempt == 1 for f in finals)
        assert trio.current_time() < 10  # nobody waited for a breaker that no longer exists


async def test_pending_operations_start_in_submission_order(tmp_path, autojump_clock) -> None:
    """With one slot, queued operations start first-in, first-out."""
    kind = ScriptedKind()
    async with open_engine(tmp_path / "state", Settings(max_concurrent=1), kinds=[kind], disk=INLINE_DISK) as eng:
        ops = [await eng.submit(ScriptedSpec(name=f"q{i}", script=["sleep:1+ok"])) for i in range(6)]
        for op in ops:
            await eng.wait(op.id)
    assert list(kind.started) == [f"q{i}" for i in range(6)]
