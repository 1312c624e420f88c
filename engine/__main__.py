"""``python -m engine`` is the ``recovery`` command."""

try:
    from ._cli import entry
except KeyboardInterrupt:  # Ctrl-C while the command's own modules load: nothing started yet
    raise SystemExit(130) from None

entry()
