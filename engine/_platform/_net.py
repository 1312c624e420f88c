"""Socket tuning: ``SO_RCVLOWAT`` only where the OS has it, and the unsent-bytes probe.

``SO_RCVLOWAT`` (Linux, macOS) lets the kernel wake a reader only once a
batch of bytes is waiting; Windows has no working equivalent, and there the
download is woken per chunk as before. ``unsent_bytes`` (Linux ``TIOCOUTQ``)
is what the test server uses before an abortive close.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

from ._select import forced, optional_module

__all__ = ["rcvlowat_supported", "set_rcvbuf", "set_rcvlowat", "unsent_bytes"]


def rcvlowat_supported() -> bool:
    """Can a socket's receive low-water mark be set here?"""
    return hasattr(socket, "SO_RCVLOWAT") and sys.platform != "win32" and not forced("rcvlowat")


def set_rcvlowat(sock: Any, value: int) -> None:
    """Set ``SO_RCVLOWAT``; raises `OSError` where the socket refuses it."""
    if not rcvlowat_supported():
        raise OSError("SO_RCVLOWAT is not available here")
    sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVLOWAT"), value)


def unsent_bytes(sock: Any) -> int | None:
    """Bytes sent but not yet acknowledged by the peer (Linux); None where it cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    fcntl, termios = optional_module("fcntl"), optional_module("termios")
    if fcntl is None or termios is None:
        return None
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0])
    except OSError:
        return None


def set_rcvbuf(sock: Any, size: int) -> None:
    """Cap the socket's receive buffer (``SO_RCVBUF``; Linux's autotuning stops for it).

    A rate-limited reader wants a small one: otherwise the kernel takes
    megabytes on its behalf and the sender sees a rate far above the limit.
    Best effort: a socket that refuses it is left as it is.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError:
        pass
