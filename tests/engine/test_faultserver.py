"""The fault server's wire behaviour, one fault at a time."""

from __future__ import annotations

import email.utils
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import attrs
import httpx
import pytest
import trio
import trio.testing

from engine import testing
from engine.testing import FaultServer, Faults, VirtualFile, content_bytes, content_sha256, file_url

SIZE = 300_000


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    srv = FaultServer()
    async with srv.running():
        yield srv


@pytest.fixture
async def client(server: FaultServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url) as c:
        yield c


async def fetch(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None, **kwargs: object
) -> tuple[httpx.Response, bytes, Exception | None]:
    """GET ``url`` streaming; return the response, the body bytes received and the error that cut it."""
    got = bytearray()
    async with client.stream("GET", url, headers=headers, **kwargs) as response:  # type: ignore[arg-type]
        try:
            async for chunk in response.aiter_raw():
                got += chunk
        except httpx.TransportError as exc:
            return response, bytes(got), exc
    return response, bytes(got), None


# --- content -------------------------------------------------------------------


def test_content_slices_agree_with_whole_file() -> None:
    """Any slice equals the same slice of the whole file, and sha256 covers the whole file."""
    whole = content_bytes("seed", SIZE)
    assert len(whole) == SIZE
    for start, end in [(0, 1), (65_535, 65_537), (100_000, 200_001), (SIZE - 5, SIZE), (7, 7)]:
        assert content_bytes("seed", SIZE, start, end) == whole[start:end]
    assert content_sha256("seed", SIZE) == hashlib.sha256(whole).hexdigest()


def test_content_depends_on_seed_size_and_offset() -> None:
    """Different seeds or sizes give different bytes, and no two blocks of a file are alike."""
    assert content_bytes("a", SIZE) != content_bytes("b", SIZE)
    assert content_bytes("a", SIZE, 0, 1000) != content_bytes("a", SIZE + 1, 0, 1000)
    block = 64 * 1024
    blocks = {content_bytes("a", SIZE, i * block, (i + 1) * block) for i in range(SIZE // block)}
    assert len(blocks) == SIZE // block
    assert content_bytes("a", SIZE, 1, 1001) != content_bytes("a", SIZE, 0, 1000)


def test_content_of_a_huge_file_is_lazy() -> None:
    """The tail of a 1 TiB file is produced without materialising the file."""
    size = 1 << 40
    tail = content_bytes("huge", size, size - 100_000)
    assert len(tail) == 100_000
    with pytest.raises(ValueError):
        content_bytes("huge", size, 0, size + 1)


def test_virtual_file_changed_version() -> None:
    """The changed version has another seed, ETag and a later Last-Modified."""
    file = VirtualFile(seed="s", size=10)
    new = file.changed(20)
    assert (new.size, new.seed) == (20, "s#changed")
    assert new.etag != file.etag and new.last_modified_s > file.last_modified_s
    assert new.sha256 == content_sha256("s#changed", 20)


def test_faults_query_round_trip() -> None:
    """Every Faults field survives to_query/from_query, and unknown names are refused."""
    faults = Faults(
        drop_after=1, drop_times=2, stall_after=3, stall_s=4.5, stall_times=6, status=503, status_times=7,
        retry_after="8", ignore_range=True, change_after=9, changed_size=10, bad_content_range=True,
        short_by=11, rate_bps=12.5, no_etag=True, no_length=True, no_last_modified=True,
        redirect_to="/x", redirects=13, filename="a b.bin", content_disposition="inline", max_concurrent=14,
    )  # fmt: skip
    assert set(faults.to_query()) == {f.name for f in attrs.fields(Faults)}
    assert Faults.from_query(faults.to_query()) == faults
    assert Faults.from_query({}) == Faults()
    with pytest.raises(ValueError, match="drop_afterr"):
        Faults.from_query({"drop_afterr": "1"})
    with pytest.raises(ValueError):
        Faults(drop_after=-1)


def test_exports_are_complete_and_sorted() -> None:
    """engine.testing.__all__ is sorted and names exactly its public attributes."""
    public = {name for name in vars(testing) if not name.startswith("_")} - {"annotations"}
    assert testing.__all__ == sorted(testing.__all__)
    assert set(testing.__all__) == public


# --- plain serving -------------------------------------------------------------


async def test_full_get(server: FaultServer, client: httpx.AsyncClient) -> None:
    """A plain GET is a 200 with the whole content, a strong ETag, Last-Modified and a length."""
    file = server.add_file("/m.bin", size=SIZE)
    response = await client.get("/m.bin")
    assert response.status_code == 200
    assert response.content == content_bytes("/m.bin", SIZE)
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["etag"] == file.etag and file.etag.startswith('"')
    assert email.utils.parsedate_to_datetime(response.headers["last-modified"]).timestamp() == file.last_modified_s
    assert response.headers["accept-ranges"] == "bytes"


async def test_head(server: FaultServer, client: httpx.AsyncClient) -> None:
    """HEAD gives the GET headers and no body."""
    server.add_file("/m.bin", size=SIZE, seed="other")
    response = await client.head("/m.bin")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(SIZE)
    assert response.content == b""


async def test_query_file_and_seed(client: httpx.AsyncClient) -> None:
    """A /files/ URL defines the file by its query; the seed defaults to the path."""
    response = await client.get("/files/q.bin?size=1234")
    assert response.content == content_bytes("/files/q.bin", 1234)
    response = await client.get("/files/q.bin?size=1234&seed=xyz")
    assert response.content == content_bytes("xyz", 1234)


async def test_unknown_path_and_bad_query(client: httpx.AsyncClient) -> None:
    """Unknown paths are 404, a misspelt fault parameter is 400, other methods 405."""
    assert (await client.get("/nope")).status_code == 404
    response = await client.get("/files/x?size=10&drop_aftr=3")
    assert response.status_code == 400 and "drop_aftr" in response.text
    assert (await client.post("/files/x?size=10")).status_code == 405


async def test_range_open_ended(server: FaultServer, client: httpx.AsyncClient) -> None:
    """Range bytes=N- is a 206 with the exact tail and Content-Range N-(size-1)/size."""
    server.add_file("/m.bin", size=SIZE)
    response = await client.get("/m.bin", headers={"Range": "bytes=123456-"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 123456-{SIZE - 1}/{SIZE}"
    assert response.content == content_bytes("/m.bin", SIZE, 123456)


async def test_range_closed_and_suffix(server: FaultServer, client: httpx.AsyncClient) -> None:
    """Range bytes=N-M and bytes=-K are served exactly; M past the end is clamped."""
    server.add_file("/m.bin", size=SIZE)
    response = await client.get("/m.bin", headers={"Range": "bytes=10-19"})
    assert (response.status_code, response.headers["content-range"]) == (206, f"bytes 10-19/{SIZE}")
    assert response.content == content_bytes("/m.bin", SIZE, 10, 20)
    response = await client.get("/m.bin", headers={"Range": "bytes=-5"})
    assert response.content == content_bytes("/m.bin", SIZE, SIZE - 5)
    response = await client.get("/m.bin", headers={"Range": f"bytes={SIZE - 2}-{SIZE + 50}"})
    assert response.headers["content-range"] == f"bytes {SIZE - 2}-{SIZE - 1}/{SIZE}"


async def test_range_past_end_is_416(server: FaultServer, client: httpx.AsyncClient) -> None:
    """A range starting at or after the size is 416 with Content-Range bytes */size."""
    server.add_file("/m.bin", size=SIZE)
    for start in (SIZE, SIZE + 10):
        response = await client.get("/m.bin", headers={"Range": f"bytes={start}-"})
        assert response.status_code == 416
        assert response.headers["content-range"] == f"bytes */{SIZE}"


async def test_if_range(server: FaultServer, client: httpx.AsyncClient) -> None:
    """If-Range with the current ETag or date gives 206; a stale or weak one gives the full 200."""
    file = server.add_file("/m.bin", size=SIZE)
    ranged = {"Range": "bytes=100-"}
    assert (await client.get("/m.bin", headers={**ranged, "If-Range": file.etag})).status_code == 206
    assert (await client.get("/m.bin", headers={**ranged, "If-Range": file.last_modified})).status_code == 206
    for stale in ('"stale"', f"W/{file.etag}", file.changed().last_modified):
        response = await client.get("/m.bin", headers={**ranged, "If-Range": stale})
        assert response.status_code == 200 and response.content == file.read()


# --- faults --------------------------------------------------------------------


async def test_drop_after(client: httpx.AsyncClient) -> None:
    """drop_after gives exactly N body bytes then a reset, for drop_times responses only."""
    url = "/files/d.bin?size=300000&drop_after=100000&drop_times=1"
    response, body, error = await fetch(client, url)
    assert isinstance(error, httpx.ReadError)
    assert body == content_bytes("/files/d.bin", SIZE, 0, 100_000)
    response, body, error = await fetch(client, url)
    assert error is None and body == content_bytes("/files/d.bin", SIZE)


async def test_drop_after_counts_per_response(server: FaultServer, client: httpx.AsyncClient) -> None:
    """A resumed request drops drop_after bytes past its own start; drop_times=None drops every time."""
    server.add_file("/d.bin", size=SIZE, faults=Faults(drop_after=50_000))
    for start in (0, 50_000, 100_000):
        _, body, error = await fetch(client, "/d.bin", {"Range": f"bytes={start}-"})
        assert error is not None and body == content_bytes("/d.bin", SIZE, start, start + 50_000)
    _, body, error = await fetch(client, "/d.bin", {"Range": "bytes=260000-"})
    assert error is None and len(body) == 40_000


async def test_stall_hits_client_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """stall_after sends N bytes then nothing, so the client's read timeout fires (in virtual time)."""
    server = FaultServer()
    server.add_file("/s.bin", size=SIZE, faults=Faults(stall_after=70_000))
    async with server.running() as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        began = trio.current_time()
        _, body, error = await fetch(client, "/s.bin")
        assert isinstance(error, httpx.ReadTimeout)
        assert body == content_bytes("/s.bin", SIZE, 0, 70_000)
        assert 30 <= trio.current_time() - began < 31
        assert server.stats.paths["/s.bin"].records[0].outcome == "stalled"


async def test_stall_then_resume(autojump_clock: trio.testing.MockClock) -> None:
    """A finite stall_s pauses the body that long, then the body completes; stall_times=1 stalls once."""
    server = FaultServer()
    server.add_file("/s.bin", size=SIZE, faults=Faults(stall_after=0, stall_s=5, stall_times=1))
    async with server.running() as url, httpx.AsyncClient(base_url=url, timeout=None) as client:
        for expected_s in (5, 0):
            began = trio.current_time()
            _, body, error = await fetch(client, "/s.bin")
            assert error is None and body == content_bytes("/s.bin", SIZE)
            assert trio.current_time() - began == pytest.approx(expected_s, abs=0.01)


async def test_status_then_ok(client: httpx.AsyncClient) -> None:
    """status=503 with status_times=2 answers 503 + Retry-After twice, then the file."""
    url = "/files/s.bin?size=1000&status=503&status_times=2&retry_after=7"
    for _ in range(2):
        response = await client.get(url)
        assert (response.status_code, response.headers["retry-after"]) == (503, "7")
    response = await client.get(url)
    assert response.status_code == 200 and response.content == content_bytes("/files/s.bin", 1000)


async def test_status_always(server: FaultServer, client: httpx.AsyncClient) -> None:
    """status without status_times answers that status every time, here with an HTTP-date Retry-After."""
    when = email.utils.formatdate(2_000_000_000, usegmt=True)
    server.add_file("/s.bin", size=10, faults=Faults(status=429, retry_after=when))
    for _ in range(3):
        response = await client.get("/s.bin")
        assert (response.status_code, response.headers["retry-after"]) == (429, when)
    response = await client.head("/s.bin")
    assert (response.status_code, response.content) == (429, b"")


async def test_ignore_range(server: FaultServer, client: httpx.AsyncClient) -> None:
    """ignore_range answers a range request with 200 and the full body, without Accept-Ranges."""
    server.add_file("/i.bin", size=SIZE, faults=Faults(ignore_range=True))
    response = await client.get("/i.bin", headers={"Range": "bytes=1000-"})
    assert response.status_code == 200 and "content-range" not in response.headers
    assert "accept-ranges" not in response.headers
    assert response.content == content_bytes("/i.bin", SIZE)


async def test_change_after(server: FaultServer, client: httpx.AsyncClient) -> None:
    """change_after=K serves K requests of the original, then other bytes, ETag and size."""
    file = server.add_file("/c.bin", size=SIZE, faults=Faults(change_after=2, changed_size=SIZE + 7))
    first = [await client.get("/c.bin") for _ in range(2)]
    assert all(r.headers["etag"] == file.etag and r.content == file.read() for r in first)
    new = file.changed(SIZE + 7)
    response = await client.get("/c.bin", headers={"Range": "bytes=10-", "If-Range": file.etag})
    assert response.status_code == 200 and response.headers["etag"] == new.etag
    assert response.content == content_bytes("/c.bin#changed", SIZE + 7)


async def test_bad_content_range(server: FaultServer, client: httpx.AsyncClient) -> None:
    """bad_content_range answers 206 for a range starting elsewhere than asked."""
    server.add_file("/b.bin", size=SIZE, faults=Faults(bad_content_range=True))
    response = await client.get("/b.bin", headers={"Range": "bytes=5000-"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 0-{SIZE - 1}/{SIZE}"
    response = await client.get("/b.bin", headers={"Range": "bytes=0-"})
    assert response.headers["content-range"] == f"bytes 1-{SIZE - 1}/{SIZE}"


async def test_short_by(client: httpx.AsyncClient) -> None:
    """short_by sends N bytes fewer than Content-Length and closes, which the client sees as a premature close."""
    response, body, error = await fetch(client, "/files/short.bin?size=1000&short_by=10")
    assert response.headers["content-length"] == "1000"
    assert isinstance(error, httpx.RemoteProtocolError)
    assert body == content_bytes("/files/short.bin", 1000, 0, 990)


async def test_rate_bps(autojump_clock: trio.testing.MockClock) -> None:
    """rate_bps throttles the body: 100 kB at 10 kB/s takes 10 (virtual) seconds."""
    server = FaultServer()
    async with server.running() as url, httpx.AsyncClient(base_url=url) as client:
        began = trio.current_time()
        response = await client.get("/files/r.bin?size=100000&rate_bps=10000")
        assert response.content == content_bytes("/files/r.bin", 100_000)
        assert trio.current_time() - began == pytest.approx(10, abs=0.2)


async def test_no_etag_no_length(client: httpx.AsyncClient) -> None:
    """no_etag/no_length/no_last_modified omit those headers; the body is framed by the close."""
    response = await client.get("/files/n.bin?size=5000&no_etag=1&no_length=1&no_last_modified=1")
    for header in ("etag", "content-length", "last-modified"):
        assert header not in response.headers
    assert response.content == content_bytes("/files/n.bin", 5000)


async def test_no_etag_if_range_falls_back_to_date(client: httpx.AsyncClient) -> None:
    """Without an ETag, If-Range with the Last-Modified date still resumes."""
    url = "/files/n.bin?size=5000&no_etag=1"
    modified = (await client.head(url)).headers["last-modified"]
    response = await client.get(url, headers={"Range": "bytes=10-", "If-Range": modified})
    assert response.status_code == 206


async def test_redirect_to(server: FaultServer, client: httpx.AsyncClient) -> None:
    """redirect_to answers 302 to the given location, which a client can follow."""
    server.add_file("/real.bin", size=100)
    server.add_file("/moved.bin", size=100, faults=Faults(redirect_to="/real.bin"))
    response = await client.get("/moved.bin")
    assert (response.status_code, response.headers["location"]) == (302, "/real.bin")
    response = await client.get("/moved.bin", follow_redirects=True)
    assert response.content == content_bytes("/real.bin", 100) and len(response.history) == 1


async def test_redirect_chain(server: FaultServer, client: httpx.AsyncClient) -> None:
    """redirects=N passes through N 302s on the same path before the file; stats count the hops."""
    url = "/files/chain.bin?size=100&redirects=3"
    response = await client.get(url, follow_redirects=True)
    assert len(response.history) == 3 and response.content == content_bytes("/files/chain.bin", 100)
    statuses = [r.status for r in server.stats.paths["/files/chain.bin"].records]
    assert statuses == [302, 302, 302, 200]
    with pytest.raises(httpx.TooManyRedirects):
        await client.get("/files/chain2.bin?size=100&redirects=21", follow_redirects=True)


async def test_content_disposition(client: httpx.AsyncClient) -> None:
    """filename= sends a quoted Content-Disposition; content_disposition sends a raw value."""
    response = await client.get(file_url("", "/files/cd.bin", size=10, faults=Faults(filename='../e"vil.bin')))
    assert response.headers["content-disposition"] == 'attachment; filename="../e\\"vil.bin"'
    raw = "attachment; filename*=UTF-8''%2E%2E%2Fx.bin"
    response = await client.get(file_url("", "/files/cd.bin", size=10, faults=Faults(content_disposition=raw)))
    assert response.headers["content-disposition"] == raw


async def test_file_url_builds_query(server: FaultServer, client: httpx.AsyncClient) -> None:
    """server.url() encodes size, seed and faults so the server applies them."""
    url = server.url("/files/u.bin", size=2000, seed="k", faults=Faults(status=404))
    assert url.startswith(server.base_url + "/files/u.bin?")
    assert (await client.get(url)).status_code == 404


# --- accounting ----------------------------------------------------------------


async def test_stats_in_process_and_over_http(server: FaultServer, client: httpx.AsyncClient) -> None:
    """Stats count requests and body bytes per path and request, in-process and at /_stats, and reset."""
    server.add_file("/a.bin", size=SIZE, faults=Faults(drop_after=1000, drop_times=1))
    await fetch(client, "/a.bin")
    await fetch(client, "/a.bin", {"Range": "bytes=1000-"})
    await client.head("/a.bin")
    await trio.testing.wait_all_tasks_blocked()  # the server books a chunk after the client has it
    stats = server.stats
    path = stats.paths["/a.bin"]
    assert path.requests == 3 and path.body_bytes_sent == SIZE
    assert path.ranges == [(0, 1000), (1000, SIZE - 1000), (None, 0)]
    assert [r.outcome for r in path.records] == ["dropped", "complete", "complete"]
    assert (stats.requests, stats.body_bytes_sent, stats.connections) == (3, SIZE, 0)
    over_http = (await client.get("/_stats")).json()
    assert over_http == json.loads(json.dumps(stats.to_json()))
    assert over_http["paths"]["/a.bin"]["records"][0] == {
        "method": "GET", "status": 200, "range_start": 0, "bytes_sent": 1000, "outcome": "dropped",
    }  # fmt: skip
    assert "/_stats" not in over_http["paths"]
    assert (await client.get("/_stats")).headers["content-type"] == "application/json"
    host = server.base_url.removeprefix("http://")
    assert over_http["hosts"][host]["requests"] == 3
    assert (await client.post("/_stats/reset")).status_code == 204
    assert server.stats.requests == 0 and server.stats.paths == {}


async def test_reset_faults(server: FaultServer, client: httpx.AsyncClient) -> None:
    """Resetting faults (in-process or POST /_faults/reset) makes counted faults fire again."""
    server.add_file("/f.bin", size=10, faults=Faults(status=500, status_times=1))
    assert [(await client.get("/f.bin")).status_code for _ in range(2)] == [500, 200]
    server.reset_faults()
    assert (await client.get("/f.bin")).status_code == 500
    assert (await client.post("/_faults/reset")).status_code == 204
    assert (await client.get("/f.bin")).status_code == 500


async def test_peak_connections(autojump_clock: trio.testing.MockClock) -> None:
    """Simultaneous connections are counted, globally and per Host header, with their peak."""
    server = FaultServer()
    server.add_file("/p.bin", size=SIZE, faults=Faults(stall_after=10, stall_s=100))
    async with server.running() as url, httpx.AsyncClient(base_url=url) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(client.get, "/p.bin")
            await trio.testing.wait_all_tasks_blocked()
            assert (server.stats.connections, server.stats.peak_connections) == (3, 3)
            nursery.cancel_scope.cancel()
        await trio.sleep(200)  # the stalls end and the server finds the clients gone
        stats = server.stats
        host = stats.hosts[url.removeprefix("http://")]
        assert (stats.connections, stats.peak_connections) == (0, 3)
        assert (host.connections, host.peak_connections) == (0, 3)


async def test_two_loopback_servers() -> None:
    """Servers on 127.0.0.1 and 127.0.0.2 run side by side with their own stats, and can redirect across."""
    first, second = FaultServer(), FaultServer(host="127.0.0.2")
    async with first.running() as url1, second.running() as url2, httpx.AsyncClient() as client:
        assert url2.startswith("http://127.0.0.2:")
        assert (await client.get(f"{url1}/files/x?size=10")).content == content_bytes("/files/x", 10)
        assert (await client.get(f"{url2}/files/x?size=20")).content == content_bytes("/files/x", 20)
        await trio.testing.wait_all_tasks_blocked()
        assert (first.stats.body_bytes_sent, second.stats.body_bytes_sent) == (10, 20)
        first.add_file("/away.bin", size=1, faults=Faults(redirect_to=f"{url2}/files/y?size=30"))
        response = await client.get(f"{url1}/away.bin", follow_redirects=True)
        assert response.content == content_bytes("/files/y", 30)
        assert second.stats.paths["/files/y"].requests == 1


# --- run modes -----------------------------------------------------------------


def test_base_url_before_start() -> None:
    """base_url is an error until the server has started."""
    with pytest.raises(RuntimeError):
        FaultServer().base_url


def test_run_in_thread() -> None:
    """run_in_thread serves synchronous clients and stops its thread on exit."""
    import threading

    server = FaultServer()
    server.add_file("/t.bin", size=SIZE)
    before = threading.active_count()
    with server.run_in_thread() as url:
        response = httpx.get(f"{url}/t.bin", headers={"Range": "bytes=10-"})
        assert response.content == content_bytes("/t.bin", SIZE, 10)
        # The server thread books the last chunk after the client has it.
        deadline = time.monotonic() + 5
        while server.stats.paths["/t.bin"].records[0].outcome == "sending" and time.monotonic() < deadline:
            time.sleep(0.001)
        assert server.stats.paths["/t.bin"].ranges == [(10, SIZE - 10)]
    assert threading.active_count() == before
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/t.bin")


def test_run_in_thread_reports_bind_failure() -> None:
    """A server that cannot bind raises from run_in_thread instead of hanging."""
    with pytest.raises(OSError):
        with FaultServer(host="192.0.2.1").run_in_thread():
            pass


def test_process_mode() -> None:
    """python -m engine.testing serve prints its URL first and serves files and /_stats until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.testing", "serve", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        response = httpx.get(f"{url}/files/p.bin?size=5000&status=503&status_times=1")
        assert response.status_code == 503
        response = httpx.get(f"{url}/files/p.bin?size=5000&status=503&status_times=1")
        assert response.content == content_bytes("/files/p.bin", 5000)
        assert httpx.get(f"{url}/_stats").json()["paths"]["/files/p.bin"]["requests"] == 2
    finally:
        proc.kill()
        proc.wait()


async def test_drop_after_reaches_a_slow_reader(autojump_clock: trio.testing.MockClock) -> None:
    """Every byte before a drop reaches even a reader slower than the socket buffers."""
    size, drop = 20_000_000, 12_000_000
    async with FaultServer().running() as url, httpx.AsyncClient(base_url=url, timeout=None) as client:
        got = 0
        async with client.stream("GET", f"/files/slow.bin?size={size}&drop_after={drop}") as response:
            with pytest.raises(httpx.ReadError):
                async for chunk in response.aiter_raw():
                    got += len(chunk)
                    await trio.sleep(0.01)
        assert got == drop
