"""The `anomaly-spotter` command: one module per command (`predict`, `score-spark`, `promote`,
`export`, `dashboard`, `server`) and `main`, the parser that joins them."""

from anomaly_spotter.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
