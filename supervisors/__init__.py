"""A domain-free structured-concurrency toolkit on trio.

Actors with mailboxes (`open_mailbox`, `MailboxAddress.ask`/`tell`),
supervisor nurseries that own, pause, cancel and rerun children
(`open_supervisor`), and the backoff schedules that drive reruns
(`Backoff`, `RetryPolicy`). Nothing here knows about HTTP, files or
operations.
"""

from ._backoff import Backoff as Backoff
from ._backoff import GiveUp as GiveUp
from ._backoff import Retry as Retry
from ._backoff import RetryPolicy as RetryPolicy
from ._mailbox import ActorGone as ActorGone
from ._mailbox import Mailbox as Mailbox
from ._mailbox import MailboxAddress as MailboxAddress
from ._mailbox import Request as Request
from ._mailbox import open_mailbox as open_mailbox
from ._sleep import SkippableSleep as SkippableSleep
from ._supervisor import Child as Child
from ._supervisor import Supervisor as Supervisor
from ._supervisor import open_supervisor as open_supervisor

__all__ = [
    "ActorGone",
    "Backoff",
    "Child",
    "GiveUp",
    "Mailbox",
    "MailboxAddress",
    "Request",
    "Retry",
    "RetryPolicy",
    "SkippableSleep",
    "Supervisor",
    "open_mailbox",
    "open_supervisor",
]
