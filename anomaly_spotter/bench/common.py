"""What every benchmark shares: its report files, the CLI as users call it, the CPUs it ran on."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from anomaly_spotter.core.machine import cpu_model


def write_report(out: Path, text: str, payload: Any) -> None:
    """A benchmark's Markdown table to `out` and its rows, as JSON, beside it (`out` with suffix .json)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")


def cli_command() -> list[str]:
    """`anomaly-spotter` as this interpreter runs it (benchmarks time the CLI as users call it)."""
    return [sys.executable, "-m", "anomaly_spotter.cli"]


def cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def machine() -> str:
    """What a benchmark report names its machine by: CPU model, cores, Python."""
    return f"{cpu_model()}, {cpus()} CPU cores, Python {platform.python_version()}"
