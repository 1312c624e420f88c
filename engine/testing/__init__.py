"""Test helpers for code that downloads: a fault-injecting loopback HTTP server.

Run it as a process with ``python -m engine.testing serve --port 0``: the first
line on stdout is the base URL.

`INLINE_DISK` is the engine's disk work for tests on trio's autojump clock:
``open_engine(state_dir, disk=INLINE_DISK)`` runs every fsync inline, so the
clock never jumps while a helper thread waits for the disk.
"""

from .._disk import INLINE as INLINE_DISK

from ._faultcontent import Faults as Faults
from ._faultcontent import HostStats as HostStats
from ._faultcontent import PathStats as PathStats
from ._faultcontent import RequestRecord as RequestRecord
from ._faultcontent import ServerStats as ServerStats
from ._faultcontent import VirtualFile as VirtualFile
from ._faultcontent import content_bytes as content_bytes
from ._faultcontent import content_sha256 as content_sha256
from ._faultcontent import file_url as file_url
from ._faultcontent import refetched as refetched
from ._faultserver import FaultServer as FaultServer
from ._faultserver import main as main

__all__ = [
    "FaultServer",
    "Faults",
    "HostStats",
    "INLINE_DISK",
    "PathStats",
    "RequestRecord",
    "ServerStats",
    "VirtualFile",
    "content_bytes",
    "content_sha256",
    "file_url",
    "main",
    "refetched",
]

if __name__ == "__main__":
    raise SystemExit(main())
