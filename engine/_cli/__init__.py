"""The ``recovery`` command line (SPEC section 13).

Owns: the dispatcher (`_main`), the commands (`_download`, `_project`,
`_serve`, `_client`), the runner that drives a batch of operations to the end
(`_runner`), joining the engine that already holds the state directory
(`_join`), the terminal display (`_display`) and the log set-up (`_logsetup`).

May import: the core of ``engine``, `engine._server` (``serve`` and the
client commands), `engine._projects` (project files and imports) and
`engine.testing` (``recovery demo``). Nothing below the command line imports it.
"""

from ._main import entry as entry
from ._main import main as main

__all__ = ["entry", "main"]
