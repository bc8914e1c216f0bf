"""Benchmarks that print numbers and write `benchmarks/*.md`: detectors (`detectors.py`), edge export
(`export.py`), the served model under load (`serve.py`) and Spark (`spark.py`). Never imported by the
library."""
