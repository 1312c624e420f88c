"""Example install step: create an "app" folder with a requirements file (stands in for git clone).

Idempotent, as every install step must be: a retried step reruns from the start.
"""

import sys
from pathlib import Path

app = Path(sys.argv[1])
app.mkdir(parents=True, exist_ok=True)
(app / "requirements.txt").write_text("torch\nsafetensors\n")
print(f"created {app}/requirements.txt")
