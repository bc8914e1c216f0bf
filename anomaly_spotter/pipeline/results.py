"""Writing result files the same way in every stage: JSON floats rounded, numpy scalars as Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Decimal places of floats in result JSON files.
JSON_DECIMALS = 6


def write_json(path: Path, values: Any) -> None:
    """`values` as indented JSON, floats rounded to JSON_DECIMALS places (nan / inf -> null)."""
    path.write_text(json.dumps(rounded(values), indent=2) + "\n")


def k_of_n(k: Any, n: int) -> str:
    """The original's "defects detected k/n"; "-" when it could not be measured out-of-fold."""
    return f"{int(k)}/{int(n)}" if not pd.isna(k) else f"-/{int(n)}"


def py(value: Any) -> Any:
    """A numpy scalar as the Python value; pandas NA as None."""
    if value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


def rounded(obj: Any) -> Any:
    """`obj` with every float rounded to JSON_DECIMALS places, nan / inf as None, recursively in dicts."""
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, float | np.floating):
        return None if not np.isfinite(obj) else round(float(obj), JSON_DECIMALS)
    return py(obj)
