"""``python -m engine`` is the ``recovery`` command."""

from ._cli import entry

entry()
