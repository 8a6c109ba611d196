"""Shared by the benchmarks: where their JSON goes and how it is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(results: dict[str, Any], out: str | Path) -> None:
    """Write a benchmark's results as JSON (folders created) and say where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
