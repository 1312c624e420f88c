"""``python -m engine.testing serve --port 0``: the fault server as a process."""

from ._faultserver import main

raise SystemExit(main())
