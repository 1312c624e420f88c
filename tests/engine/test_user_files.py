"""SPEC 6.1: the user's files and credentials, against a real loopback server and real files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from engine._download._kind import DownloadKind
from engine._download._names import safe_basename, validate_headers, windows_name_problem
from engine._download._redirects import next_request
from engine._download._safefile import open_part_fd
from engine._errors import RefusedError
from engine._settings import Settings
from engine._specs import DownloadSpec
from engine.testing import FaultServer

def _sibling(name: str):  # type: ignore[no-untyped-def]
    """The download kind's test module: its Runner and fixtures drive one attempt like the engine."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_download_kind_tests", Path(__file__).with_name(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_kind_tests = _sibling("test_download_kind.py")
SIZE, Runner = _kind_tests.SIZE, _kind_tests.Runner
client, make, server = _kind_tests.client, _kind_tests.make, _kind_tests.server

OTHER = b"the user's only copy\n" * 100


def _other(tmp_path: Path) -> Path:
    victim = tmp_path / "elsewhere" / "precious.bin"
    victim.parent.mkdir()
    victim.write_bytes(OTHER)
    return victim


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
async def test_planted_part_link_is_never_written_through(server: FaultServer, make: Callable[..., Runner],
                                                         tmp_path: Path, link: str) -> None:
    """A .part planted as a symlink or hard link is replaced; the other file stays byte-for-byte the same."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    victim = _other(tmp_path)
    (os.symlink if link == "symlink" else os.link)(victim, run.part)
    await run.run()
    assert victim.read_bytes() == OTHER
    assert run.dest.read_bytes() == file.read() and not run.dest.is_symlink()


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
async def test_planted_part_link_with_404_truncates_nothing(server: FaultServer, make: Callable[..., Runner],
                                                            tmp_path: Path, link: str) -> None:
    """A 404 with a planted .part symlink or hard link leaves the other file intact and no .part behind."""
    run = make(server.base_url + "/missing.bin")
    victim = _other(tmp_path)
    (os.symlink if link == "symlink" else os.link)(victim, run.part)
    exc, _ = await run.fail()
    assert exc.error.code == "E_HTTP_CLIENT"
    assert victim.read_bytes() == OTHER and not os.path.lexists(run.part)
    assert os.stat(victim).st_nlink == 1


async def test_second_writer_gets_in_use(server: FaultServer, make: Callable[..., Runner]) -> None:
    """While one writer holds the .part lock, another attempt on that destination is E_IN_USE naming the file."""
    server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin")
    fd = open_part_fd(run.part)
    os.write(fd, b"x" * 10)
    try:
        exc, _ = await run.fail()
    finally:
        os.close(fd)
    assert exc.error.code == "E_IN_USE" and str(run.part) in exc.error.message
    assert run.part.read_bytes() == b"x" * 10


async def test_existing_file_is_refused_with_e_exists(server: FaultServer, make: Callable[..., Runner]) -> None:
    """A file already at dest is E_EXISTS naming it and how to overwrite; it is untouched and nothing is fetched."""
    server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin")
    run.dest.write_bytes(OTHER)
    exc, _ = await run.fail()
    assert exc.error.code == "E_EXISTS" and not exc.error.retryable
    assert str(run.dest) in exc.error.message and "--overwrite" in exc.error.message
    assert run.dest.read_bytes() == OTHER and "/m.bin" not in server.stats.paths


async def test_overwrite_replaces_existing_file(server: FaultServer, client: httpx.AsyncClient,
                                                tmp_path: Path) -> None:
    """With overwrite=True the existing file is replaced by the verified download."""
    file = server.add_file("/m.bin", size=SIZE)
    cfg = Settings(download_root=str(tmp_path))
    spec = DownloadKind().validate(DownloadSpec(url=server.base_url + "/m.bin", dest="model.bin",
                                                overwrite=True), cfg)
    run = Runner(client, spec, cfg)
    run.dest.write_bytes(OTHER)
    await run.run()
    assert run.dest.read_bytes() == file.read()


async def test_existing_file_matching_sha256_completes_at_once(server: FaultServer,
                                                               make: Callable[..., Runner]) -> None:
    """A present file matching the given sha256 is complete without a request."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    run.dest.write_bytes(file.read())
    ctx = await run.run()
    assert ctx.bytes_received == 0 and "/m.bin" not in server.stats.paths
    assert run.state["complete"] and run.progress[-1] == (SIZE, SIZE)


async def test_recorded_success_is_still_complete(server: FaultServer, make: Callable[..., Runner]) -> None:
    """A recorded success answers the same download again while its file is intact, not once it changed."""
    server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin")
    await run.run()
    kind = DownloadKind()
    assert kind.still_complete(run.spec, run.state, run.spec)
    run.dest.write_bytes(b"changed")
    assert not kind.still_complete(run.spec, run.state, run.spec)


async def test_redirect_to_data_url_leaves_no_part(server: FaultServer, make: Callable[..., Runner]) -> None:
    """A redirect to a data: URL is E_INVALID_INPUT and leaves no empty .part."""
    from engine.testing import Faults

    server.add_file("/m.bin", size=SIZE, faults=Faults(redirect_to="data:text/plain,hi"))
    run = make(server.base_url + "/m.bin")
    exc, _ = await run.fail()
    assert exc.error.code == "E_INVALID_INPUT" and not os.path.lexists(run.part)


def test_credential_headers_dropped_on_cross_host_redirect() -> None:
    """Every credential header is dropped when a redirect changes host, port or scheme, kept on the same origin."""
    headers = {"Authorization": "Bearer s3cr3t", "Cookie": "c=1", "X-Api-Key": "k", "X-HF-Token": "t",
               "Accept": "*/*"}
    request = httpx.Request("GET", "http://a.example/f", headers=headers)
    for target, kept in (("http://b.example/f", False), ("https://a.example/f", False),
                         ("http://a.example:81/f", False), ("/g", True)):
        response = httpx.Response(302, headers={"Location": target}, request=request)
        response.next_request = httpx.Request("GET", request.url.join(target))
        follow = next_request(request, response)
        names = {k.lower() for k in follow.headers}
        for name in ("authorization", "cookie", "x-api-key", "x-hf-token"):
            assert (name in names) is kept, (target, name)
        assert "accept" in names


@pytest.mark.parametrize("value", ["Bearer abc\x0bdef", "Bearer abc\x00", "Bearer é"])
def test_bad_header_value_refused_without_echo(value: str) -> None:
    """An illegal header value is E_INVALID_INPUT naming the header, never echoing the value."""
    with pytest.raises(RefusedError) as info:
        validate_headers({"Authorization": value})
    assert info.value.code == "E_INVALID_INPUT" and "Authorization" in info.value.message
    assert "abc" not in info.value.message and "é" not in info.value.message


def test_header_value_surrounding_space_is_dropped() -> None:
    """A trailing space (a paste accident) is not part of an HTTP header value."""
    assert validate_headers({"Authorization": "Bearer abc \t"}) == {"Authorization": "Bearer abc"}


@pytest.mark.parametrize("name", ["con", "NUL.safetensors", "COM1", "aux", "lpt9.txt", "a<b", "x.", "y ", "a:b.bin",
                                  "CON.tar.gz", "conin$", "com\u00b9", 'a"b', "a|b", "a?b", "a*b", "m.safetensors. "])
def test_windows_names(name: str) -> None:
    """Windows device names and characters are refused for import entries and reduced in names from URLs."""
    assert windows_name_problem(name) is not None
    reduced = safe_basename(name)
    assert reduced is None or windows_name_problem(reduced) is None


def test_state_dir_temp_files_removed_at_start(tmp_path: Path) -> None:
    """A statistics temp file a crash left in the state directory is removed when the store opens."""
    from engine._store import SnapshotStore

    (tmp_path / "state").mkdir(mode=0o700)
    leftover = tmp_path / "state" / ".stats.msgpack.0a1b2c3d.tmp"
    leftover.write_bytes(b"half")
    store = SnapshotStore(tmp_path / "state")
    store.open()
    store.close()
    assert not leftover.exists()




_CREDENTIALS = {"Authorization": "Bearer s3cr3t", "Cookie": "sid=c00kie", "X-Api-Key": "k3y", "X-HF-Token": "hf-t0k",
                "X-Custom-Secret": "cust0m", "Proxy-Authorization": "Basic cHJveHk="}


@pytest.mark.parametrize("hop", ["other host", "other port", "same origin"])
async def test_credential_headers_never_reach_the_host_a_redirect_leads_to(tmp_path: Path, hop: str) -> None:
    """Against real loopback servers: a redirect to another host or port delivers none of the credential
    headers there (Authorization, Cookie, X-Api-Key, X-HF-Token, *-Secret, Proxy-Authorization) but does
    deliver the others; a same-origin redirect keeps them all; the file lands exact either way."""
    import hashlib

    import trio

    from engine import Status, open_engine

    first = FaultServer()
    target = FaultServer(host="127.0.0.2") if hop == "other host" else FaultServer()
    async with first.running(), target.running():
        served = (first if hop == "same origin" else target).add_file("/files/m.bin", size=SIZE)
        base = first.base_url if hop == "same origin" else target.base_url
        from engine.testing import Faults

        first.add_file("/start", size=1, faults=Faults(redirect_to=base + "/files/m.bin"))
        settings = Settings(download_root=str(tmp_path / "dl"), max_retries=0)
        async with open_engine(tmp_path / "state", settings) as eng:
            op = await eng.submit(DownloadSpec(url=first.base_url + "/start", dest="m.bin",
                                               headers={**_CREDENTIALS, "X-Trace": "visible"}))
            with trio.fail_after(60):
                final = await eng.wait(op.id)
        assert final.status is Status.SUCCESS, final.error
        assert hashlib.sha256((tmp_path / "dl" / "m.bin").read_bytes()).hexdigest() == served.sha256
        asked = dict(first.headers_seen)["/start"]
        reached = dict((first if hop == "same origin" else target).headers_seen)["/files/m.bin"]
    for name, value in _CREDENTIALS.items():
        assert asked.get(name.lower()) == value  # the host the user named gets them all
        assert (reached.get(name.lower()) == value) is (hop == "same origin"), (name, reached)
    assert reached.get("x-trace") == "visible"


@pytest.mark.parametrize("given,expected", [
    ("cd:CON", "_CON"), ("cd:nul.safetensors", "_nul.safetensors"), ("cd:model.safetensors. ", "model.safetensors"),
    ("cd:a:b.bin", "a_b.bin"), ("url:COM1", "_COM1"), ("url:aux.tar.gz", "_aux.tar.gz")])
async def test_device_names_from_the_server_are_reduced_end_to_end(tmp_path: Path, given: str,
                                                                   expected: str) -> None:
    """A Windows device name (or a trailing dot/space, a ':') in Content-Disposition or the URL's last
    segment lands under a reduced, safe name in the folder asked for, on every platform."""
    import trio

    from engine import Status, open_engine
    from engine.testing import Faults

    source, name = given.split(":", 1)
    server = FaultServer()
    async with server.running():
        if source == "cd":
            file = server.add_file("/api/download/7", size=SIZE,
                                   faults=Faults(content_disposition=f'attachment; filename="{name}"'))
            url = server.base_url + "/api/download/7"
        else:
            file = server.add_file("/files/" + name, size=SIZE)
            url = server.base_url + "/files/" + name
        async with open_engine(tmp_path / "state", Settings(download_root=str(tmp_path / "dl"))) as eng:
            op = await eng.submit(DownloadSpec(url=url))
            with trio.fail_after(60):
                final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS, final.error
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [expected]
    assert windows_name_problem(expected) is None
    assert (tmp_path / "dl" / expected).read_bytes() == file.read()


async def test_engine_start_removes_temp_files_anywhere_in_the_state_dir_only(tmp_path: Path) -> None:
    """open_engine removes the temp files a crash left in the state dir and its folders (statistics,
    snapshots, settings), keeps other files, and never follows a link out of the state dir."""
    from engine import open_engine

    state = tmp_path / "state"
    (state / "operations").mkdir(parents=True, mode=0o700)
    (state / "logs").mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    theirs = elsewhere / ".data.bin.0123abcd.tmp"
    theirs.write_bytes(OTHER)
    os.symlink(elsewhere, state / "linked")
    leftovers = [state / ".stats.msgpack.9f8e7d6c.tmp", state / ".settings.json.00ff00ff.tmp",
                 state / "operations" / ".1a2b-c3.msgpack.deadbeef.tmp", state / "logs" / ".x.0a0b0c0d.tmp"]
    kept = [state / "notes.tmp", state / ".stats.msgpack.tmp", state / "operations" / "readme.txt"]
    for path in leftovers + kept:
        path.write_bytes(b"half")
    async with open_engine(state):
        pass
    assert [p for p in leftovers if p.exists()] == []
    assert all(p.read_bytes() == b"half" for p in kept)
    assert theirs.read_bytes() == OTHER
