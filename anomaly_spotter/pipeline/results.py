"""Writing result files the same way in every stage: JSON floats rounded, numpy scalars as Python; and
whether a run's means are "overall" ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_spotter.core.config import Params
from anomaly_spotter.data.index import dataset_categories

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


def covers_dataset(params: Params) -> bool:
    """Whether `data.categories` lists every category of `data.root`. Only then is the mean over them the
    "overall" figure: a mean over a subset (`dvc exp run -S 'data.categories=[fabric]'`) does not compare
    with one over the whole dataset, so the stages leave overall.json blank and log no overall metric."""
    return set(params.data.categories) >= set(dataset_categories(Path(params.data.root)))


def subset_note(params: Params) -> str:
    """The one line a stage prints when `covers_dataset` is false."""
    everything = dataset_categories(Path(params.data.root))
    chosen = sorted(set(params.data.categories))
    return (
        f"data.categories covers {len(chosen)} of the {len(everything)} categories in {params.data.root} "
        f"({', '.join(chosen)}): metrics/overall.json is left blank and no overall metric is logged, as a "
        "mean over a subset does not compare with one over them all; compare the per-category rows"
    )
