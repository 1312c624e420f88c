"""A wait that another task can cut short."""

from __future__ import annotations

import attrs
import trio

__all__ = ["SkippableSleep"]


@attrs.define(eq=False)
class SkippableSleep:
    """Sleep until a deadline unless someone calls `skip` first.

    Used for backoff waits: "Retry Now" skips the rest of the wait while the
    retry counter stays as it is.
    """

    _scope: trio.CancelScope | None = None
    _skipped: bool = False
    deadline: float | None = None

    async def sleep_until(self, deadline: float) -> bool:
        """Return True if the deadline passed, False if the wait was skipped."""
        self._skipped = False
        self.deadline = deadline
        try:
            with trio.CancelScope(deadline=deadline) as scope:
                self._scope = scope
                await trio.sleep_forever()
        finally:
            self._scope = None
            self.deadline = None
        return not self._skipped

    def skip(self) -> bool:
        """End the current wait now; False if nothing was waiting."""
        if self._scope is None:
            return False
        self._skipped = True
        self._scope.cancel()
        return True

    @property
    def waiting(self) -> bool:
        return self._scope is not None
