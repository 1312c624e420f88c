"""Mailboxes and request/reply over trio memory channels.

An actor owns the receiving end of its mailbox; anyone holding a
`MailboxAddress` can `tell` it a message (fire and forget) or `ask` it one
and await the reply. A reply is carried by a one-slot memory channel created
per request, so a reply can never reach the wrong caller.
"""

from __future__ import annotations

import math
from typing import Any, Generic, TypeVar

import attrs
import trio

__all__ = ["ActorGone", "Mailbox", "MailboxAddress", "Request", "open_mailbox"]

M = TypeVar("M")


class ActorGone(Exception):
    """The actor behind an address has stopped; nobody will read the message."""


@attrs.define(eq=False)
class Request(Generic[M]):
    """A message that expects an answer: the actor calls `reply` or `fail` once."""

    message: M
    _reply_to: trio.MemorySendChannel[tuple[bool, Any]]

    def reply(self, value: Any = None) -> None:
        """Send the answer; a caller that gave up waiting is not an error."""
        try:
            self._reply_to.send_nowait((True, value))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass

    def fail(self, exc: BaseException) -> None:
        """Make the caller's `ask` raise ``exc``."""
        try:
            self._reply_to.send_nowait((False, exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass


@attrs.define(eq=False)
class MailboxAddress(Generic[M]):
    """The sending side of a mailbox: cheap to share, safe to use from any task."""

    _send: trio.MemorySendChannel[Any]

    def tell(self, message: M) -> None:
        """Deliver without waiting (mailboxes are unbounded, so this never blocks)."""
        try:
            self._send.send_nowait(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ActorGone("the actor has stopped") from exc

    async def ask(self, message: M) -> Any:
        """Deliver a `Request` wrapping ``message`` and wait for the reply."""
        reply_send, reply_receive = trio.open_memory_channel[tuple[bool, Any]](1)
        self.tell(Request(message, reply_send))  # type: ignore[arg-type]
        async with reply_receive:
            try:
                ok, value = await reply_receive.receive()
            except trio.EndOfChannel as exc:  # pragma: no cover - defensive
                raise ActorGone("the actor stopped before replying") from exc
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Tell the actor no more messages will come from this address."""
        self._send.close()


@attrs.define(eq=False)
class Mailbox(Generic[M]):
    """The receiving side, owned by exactly one actor."""

    address: MailboxAddress[M]
    _receive: trio.MemoryReceiveChannel[Any]

    async def receive(self) -> M | Request[M]:
        return await self._receive.receive()

    def receive_nowait(self) -> M | Request[M]:
        """Raise `trio.WouldBlock` when empty."""
        return self._receive.receive_nowait()

    def close(self) -> None:
        """Stop accepting messages; later senders get `ActorGone`, pending asks fail."""
        # Drain before closing: closing the receive side discards whatever is
        # still queued, which would leave those callers' asks waiting forever.
        while True:
            try:
                pending = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(pending, Request):
                pending.fail(ActorGone("the actor stopped before replying"))
        self._receive.close()

    def __aiter__(self) -> "Mailbox[M]":
        return self

    async def __anext__(self) -> M | Request[M]:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


def open_mailbox() -> Mailbox[Any]:
    """A new unbounded mailbox; share ``mailbox.address`` with senders."""
    send, receive = trio.open_memory_channel[Any](math.inf)
    return Mailbox(MailboxAddress(send), receive)
