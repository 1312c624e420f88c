"""Example install step: a stand-in for ``pip install -r FILE`` that fails once on the network.

The first run in a folder prints what pip prints when a connection is reset and
exits 1 (the engine classifies that as E_NET_INTERRUPTED and retries); later
runs "install" every requirement into ``installed.txt`` and succeed.
"""

import sys
from pathlib import Path

args = sys.argv[1:]
if args[:2] != ["install", "-r"] or len(args) != 3:
    print("usage: fake_pip.py install -r REQUIREMENTS", file=sys.stderr)
    sys.exit(2)
requirements = [line.strip() for line in Path(args[2]).read_text().splitlines() if line.strip()]
marker = Path(".fake_pip_attempted")
for name in requirements:
    print(f"Collecting {name}", flush=True)
if not marker.exists():
    marker.touch()
    print("ERROR: Could not install packages due to an OSError: "
          "[Errno 104] Connection reset by peer", file=sys.stderr)
    sys.exit(1)
Path("installed.txt").write_text("".join(f"{name}\n" for name in requirements))
print("Successfully installed " + " ".join(requirements))
