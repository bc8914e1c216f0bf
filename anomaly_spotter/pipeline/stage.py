"""Plumbing shared by the stage scripts: CLI arguments, clean errors, all-or-nothing outputs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from anomaly_spotter import tracking
from anomaly_spotter.core.config import Params, load_params
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.pipeline.outputs import all_or_nothing
from anomaly_spotter.tracking.environment import drift_warning


def parse_args(description: str, per_category: bool) -> tuple[Params, str | None]:
    parser = argparse.ArgumentParser(description=description)
    if per_category:
        parser.add_argument("category", help="category folder name, one of data.categories in params.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    args = parser.parse_args()
    params = load_params(args.params)
    category = getattr(args, "category", None)
    if category is not None and category not in params.data.categories:
        raise AnomalySpotterError(f"category {category!r} is not in data.categories {params.data.categories}")
    tracking.add_run_tags(feedback_tags(params, category))
    return params, category


FEEDBACK_TAG = "feedback_version"


def feedback_tags(params: Params, category: str | None) -> dict[str, str]:
    """The version of the reviewed line images a stage ran with, as MLflow tags: `feedback_version`, the
    content md5 of feedback/<category>/ ("none" without one); a stage of all categories gets one tag
    `feedback_version.<category>` per category."""
    root = Path(params.feedback.root)

    def version(name: str) -> str:
        folder = root / name
        return tracking.content_md5(folder) if folder.is_dir() else "none"

    if category is not None:
        return {FEEDBACK_TAG: version(category)}
    return {f"{FEEDBACK_TAG}.{c}": version(c) for c in params.data.categories}


def progress_enabled() -> bool:
    """Progress bars on a terminal or when forced; off in CI logs unless asked for."""
    return os.environ.get("ANOMALY_SPOTTER_PROGRESS", "1") != "0"


@contextmanager
def stage_outputs(*outs: Path) -> Iterator[None]:
    """Connect to MLflow first (fail fast, nothing written), then make `outs` all-or-nothing."""
    tracking.connect()
    with all_or_nothing(*outs):
        yield


def main(stage: str, body: Callable[[], None]) -> None:
    """Run a stage body; our own errors print one clear line and exit 1, without a traceback. An environment
    that differs from requirements.lock gets one warning line first (the stage runs on)."""
    warning = drift_warning()
    if warning:
        print(f"{stage}: {warning}", file=sys.stderr)
    try:
        body()
    except AnomalySpotterError as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        sys.exit(1)
