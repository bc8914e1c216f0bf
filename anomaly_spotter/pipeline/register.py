"""Stage `register`: the tags and description a registered service model version carries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from anomaly_spotter.serving.inference import (
    InferenceConfig,
)


def _region_text(config: InferenceConfig) -> str:
    if config.region_threshold == "calibrated":
        return f"pixels above the calibrated pixel threshold {config.pixel_threshold:.6g}"
    return "the original's per-image min-max + Otsu"


def service_version_metadata(
    config: InferenceConfig,
    kind: str,
    network_ref: str,
    data_hash: str,
    commit: str,
    dirty: bool,
    headline: Mapping[str, float | None],
) -> tuple[dict[str, Any], str]:
    """Tags and description of a registered service version: what it is, what it was trained on, how good."""
    metrics = {k: v for k, v in headline.items() if v is not None}
    tags = {
        "category": config.category,
        "detector": kind,
        "data_dvc_hash": data_hash,
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "network_version": network_ref,
        "threshold": config.threshold,
        "threshold_method": config.threshold_method,
        "image_score": config.reduction,
        "image_size": config.image_size,
        "region_threshold": config.region_threshold,
        "pixel_threshold": config.pixel_threshold,
        **metrics,
    }
    metrics_text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    description = (
        f"Anomaly Spotter service model for category '{config.category}' ({kind} detector, network "
        f"{network_ref}), trained on data/prepared/{config.category} (DVC md5 {data_hash}) at git commit "
        f"{commit}{' (dirty)' if dirty else ''}. Threshold {config.threshold:.6g} "
        f"({config.threshold_method}), image score {config.reduction} of the raw map at "
        f"{config.image_size}px; region: {_region_text(config)}. Test metrics: {metrics_text}."
    )
    return tags, description


# The tag holding `service_fingerprint`: `register` adds no new version when the newest one has the same.
SERVICE_MD5_TAG = "service_md5"


def service_fingerprint(
    config: InferenceConfig,
    kind: str,
    headline: Mapping[str, Any],
    model_md5: str,
    data_hash: str,
) -> str:
    """md5 of everything a service version is: the network (its md5), the prepared data it was trained and
    judged with (reviewed images included), the threshold and settings it serves with, and its metrics."""
    content = {
        "config": config.to_dict(),
        "kind": kind,
        "headline": dict(headline),
        "model_md5": model_md5,
        "data_dvc_hash": data_hash,
    }
    return hashlib.md5(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
