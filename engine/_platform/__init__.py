"""Everything platform-specific, each with a tested fallback (SPEC section 18).

The rest of the engine never imports ``fcntl``, ``termios``, ``resource`` or
``msvcrt`` and never calls ``os.killpg``, ``syncfs``, ``O_DIRECTORY`` or
``SO_RCVLOWAT`` itself: it calls these helpers (one concern per module):

- `_lock`: the state directory's lock (flock / msvcrt / portable pid file);
- `_durable`: fsync, F_FULLFSYNC, directory sync, syncfs, pread/pwrite, fallocate;
- `_process`: process groups / Windows process groups and tree kill, command lookup;
- `_net`: SO_RCVLOWAT where it exists, SO_RCVBUF, unsent bytes;
- `_paths`: the state dir (platformdirs), case-insensitive folders, long paths, renaming open files;
- `_console`: Ctrl-C / Ctrl-Break signals.

`force_fallback` (tests only) makes the portable path win on any platform.
"""

from __future__ import annotations

from ._console import interrupt_signals, terminate_signals
from ._durable import (close_dir, dir_sync_supported, fsync_dir, fsync_file, has_syncfs, open_dir, pread,
                       preallocate, pwrite, syncfs)
from ._lock import LockHeld, StateLock, acquire as acquire_lock, lock_kind, lock_open_file
from ._net import rcvlowat_supported, set_rcvbuf, set_rcvlowat, unsent_bytes
from ._paths import (FsStats, case_insensitive, default_state_dir, long_path, open_files_can_be_renamed,
                     resource_path, statvfs)
from ._process import (group_members, own_group, pid_alive, proc_stat, process_usage, resolve_command, signal_group,
                       spawn_group_kwargs)
from ._select import FALLBACKS, force_fallback, forced

__all__ = [
    "FALLBACKS", "FsStats", "statvfs", "LockHeld", "StateLock", "acquire_lock", "case_insensitive", "close_dir", "default_state_dir",
    "dir_sync_supported", "force_fallback", "forced", "fsync_dir", "fsync_file", "group_members",
    "has_syncfs", "interrupt_signals", "lock_kind", "lock_open_file", "long_path", "open_dir",
    "open_files_can_be_renamed", "own_group", "pid_alive", "pread", "preallocate", "proc_stat", "process_usage",
    "pwrite", "rcvlowat_supported", "resolve_command", "resource_path", "set_rcvbuf", "set_rcvlowat", "signal_group",
    "spawn_group_kwargs", "syncfs", "terminate_signals", "unsent_bytes",
]
