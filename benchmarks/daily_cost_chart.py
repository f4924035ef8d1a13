"""The picture in README.md and docs/analytics.md: the daily cost chart of a default-sized demo
database, made in a temporary folder with the demo's fixed end date, so the picture changes only
when the code does.

    python -m benchmarks.daily_cost_chart docs/daily_cost.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from chatdb import create_repository, demo
from chatdb.analytics import plots


def render(path: str | Path, *, seed: int = 42, timezone: str = "UTC") -> Path:
    with tempfile.TemporaryDirectory() as folder, create_repository(f"sqlite:///{folder}/demo.db") as repo:
        demo.generate(repo, seed=seed)
        plots.daily_cost_by_model(repo, timezone=timezone, path=path)
    return Path(path)


if __name__ == "__main__":
    print(render(sys.argv[1] if len(sys.argv) > 1 else "daily_cost.png"))
