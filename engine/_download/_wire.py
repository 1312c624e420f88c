"""The fast path under a download: wider reads, batched wake-ups, hashing beside.

On a fast link the cost of a download is not the copying but the trips per
read through h11, httpcore, trio and the write loop. `widen_reads` lets the
connection read 1 MiB at a time, `ReadBatcher` asks the kernel to wake the
reader only once a batch of bytes is waiting, and `HashWorker` computes the
sha256 in a helper thread while the next bytes arrive. All three are best
effort: on another transport or OS they change nothing.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Any, Callable

import httpx
import trio

from .. import _platform

__all__ = ["READ_BYTES", "HashWorker", "PrefixHasher", "ReadBatcher", "limit_buffer", "widen_reads"]

# Bytes asked of the socket per read. httpcore asks for 64 KiB, and on a fast link every
# read is a trip through h11, httpcore, trio and the write loop: about half the CPU of a
# loopback download. The kernel returns what it has, so a larger request never delays
# data on a slow link.
_READ_BYTES = 1024 * 1024
READ_BYTES = _READ_BYTES
_LOWAT_MAX = 256 * 1024  # wake for at most this many bytes at once (SO_RCVLOWAT)
_LOWAT_WARMUP = 1024 * 1024  # measure the rate over this much before batching
_STREAM_LINKS = ("_stream", "_httpcore_stream", "_connection")


def limit_buffer(response: httpx.Response, size: int) -> None:
    """Cap the kernel's receive buffer of the socket under ``response`` (a rate-limited download)."""
    stream = response.extensions.get("network_stream")
    try:
        sock = stream.get_extra_info("socket") if stream is not None else None
    except Exception:  # noqa: BLE001 - an unexpected transport: leave it alone
        sock = None
    if sock is not None:
        _platform.set_rcvbuf(sock, size)


def widen_reads(response: httpx.Response, read_bytes: int = _READ_BYTES) -> None:
    """Let the HTTP/1.1 connection carrying ``response`` read up to ``read_bytes`` at a time.

    A rate-limited download asks for less (a tenth of a second at its rate),
    so what it lets through is smooth, not 1 MiB bursts.

    httpcore has no setting for it, so this follows the response's stream down
    to the connection and sets its ``READ_NUM_BYTES`` on that one instance
    (never the class: an embedding application's own clients are untouched).
    Best effort: any other transport (``MockTransport``, HTTP/2) is left alone.
    """
    obj: Any = response.stream
    for _ in range(8):
        if isinstance(getattr(type(obj), "READ_NUM_BYTES", None), int):
            obj.READ_NUM_BYTES = read_bytes
            return
        obj = next((getattr(obj, name) for name in _STREAM_LINKS if hasattr(obj, name)), None)
        if obj is None:
            return


class ReadBatcher:
    """Let the kernel wake the download only once a batch of bytes is waiting.

    Each wake-up costs far more (h11, httpcore, trio, this loop) than copying
    the bytes, and a reader that is woken for every 64 KiB that trickles in
    spends three times the CPU of one that takes them 1 MiB at a time. So
    the socket's ``SO_RCVLOWAT`` is set to about 50 ms worth of data at the
    rate seen so far (at most `_LOWAT_MAX`) and never above the bytes still
    expected, so the last ones, and a slow link, still wake it at once. It is
    put back to 1 before the connection returns to the pool. Best effort:
    without a plain socket underneath (TLS stays supported; only the kernel
    socket is tuned), or on another OS, nothing changes.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._sock: Any = None
        self._lowat = 1
        self._started = trio.current_time()
        self._bytes = 0
        stream = response.extensions.get("network_stream")
        try:
            sock = stream.get_extra_info("socket") if stream is not None else None
        except Exception:  # noqa: BLE001 - an unexpected transport: leave it alone
            sock = None
        if sock is not None and _platform.rcvlowat_supported():
            self._sock = sock

    def received(self, nbytes: int, remaining: int | None) -> None:
        if self._sock is None:
            return
        self._bytes += nbytes
        elapsed = trio.current_time() - self._started
        if remaining is None or self._bytes < _LOWAT_WARMUP or elapsed <= 0:
            target = 1
        else:
            target = max(1, min(_LOWAT_MAX, remaining, int(self._bytes / elapsed * 0.05)))
        self._set(target)

    def _set(self, value: int) -> None:
        if value == self._lowat:
            return
        try:
            _platform.set_rcvlowat(self._sock, value)
            self._lowat = value
        except OSError:
            self._sock = None  # not supported here: stop trying

    def close(self) -> None:
        if self._sock is not None:
            self._set(1)


class HashWorker:
    """sha256 of the body, computed in a helper thread while the next chunk is read.

    hashlib releases the GIL on large buffers, so on a fast link hashing
    overlaps the network instead of adding its ~1 s per GiB to the wall time.
    Chunks (immutable ``bytes``) go through a bounded queue: a hash that falls
    behind slows the loop down rather than buffering without limit.
    `hexdigest` waits for what is queued; `close` ends the thread and is
    called on every way out of an attempt, so no thread outlives it.
    """

    _QUEUED_CHUNKS = 16

    def __init__(self, hasher: Any = None) -> None:
        self._hasher = hasher if hasher is not None else hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=self._QUEUED_CHUNKS)
        self._thread = threading.Thread(target=self._run, name="engine-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(bytes(chunk))  # no copy for bytes; a buffer that may change is copied

    def hexdigest(self) -> str:
        self.close()
        return str(self._hasher.hexdigest())

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class PrefixHasher:
    """sha256 of a file's contiguous prefix, read back in order as the prefix grows (SPEC 6.2).

    Segments arrive out of order, so the hash cannot take chunks as they
    come: `advance` says how far the file is contiguous now, and a helper
    thread reads ``[hashed, upto)`` back (from the page cache: it was just
    written) with ``read_at(n, offset)`` on a descriptor of its own, so no
    file position is shared with the writer. The hash is complete when the
    file is, and nothing is read twice. `hexdigest` waits for the rest;
    `close` ends the thread and is called on every way out.
    """

    _CHUNK = 1024 * 1024

    def __init__(self, read_at: Callable[[int, int], bytes], *, hasher: Any = None, start: int = 0) -> None:
        self._read_at = read_at
        self._hasher = hasher if hasher is not None else hashlib.sha256()
        self.hashed = start
        self._target = start
        self._closed = False
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="engine-sha256-prefix", daemon=True)
        self._thread.start()

    def advance(self, upto: int) -> None:
        """The file is written contiguously up to ``upto``: hash up to there."""
        with self._cond:
            if upto > self._target:
                self._target = upto
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self.hashed >= self._target:
                    self._cond.wait()
                if self._closed:
                    return
                target = self._target
            try:
                while self.hashed < target and not self._closed:
                    data = self._read_at(min(self._CHUNK, target - self.hashed), self.hashed)
                    if not data:
                        raise OSError(f"the partial file ends at byte {self.hashed}, before {target}")
                    self._hasher.update(data)
                    with self._cond:
                        self.hashed += len(data)
                        self._cond.notify_all()
            except BaseException as exc:  # kept for hexdigest, never lost
                with self._cond:
                    self.error = exc
                    self._closed = True
                    self._cond.notify_all()
                return

    def wait_until(self, upto: int) -> None:
        """Block until ``upto`` bytes are hashed (raises the reader's error)."""
        self.advance(upto)
        with self._cond:
            while self.hashed < upto and self.error is None and not self._closed:
                self._cond.wait()
        if self.error is not None:
            raise self.error
        if self.hashed < upto:
            raise RuntimeError("the hash was closed before it was complete")

    def hexdigest(self) -> str:
        self.wait_until(self._target)
        self.close()
        return str(self._hasher.hexdigest())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
