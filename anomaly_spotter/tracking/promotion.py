"""Promotion: whether the newest registered version takes the champion alias, and moving the aliases
(champion, challenger) with a record of who, when and why on the version."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from anomaly_spotter.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    delete_alias,
    set_alias,
    set_model_version_tags,
)


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def _metric(tags: Mapping[str, str], name: str) -> float:
    try:
        return float(tags[name])
    except (KeyError, TypeError, ValueError):
        return float("nan")


def decide_promotion(
    candidate: Mapping[str, str],
    champion: Mapping[str, str] | None,
    metric: str,
    tiebreak: str,
) -> PromotionDecision:
    """Promote iff the candidate is at least as good as the champion on `metric` (higher is better),
    ties broken by `tiebreak` (equal on both also promotes: the newer version wins)."""
    if champion is None:
        return PromotionDecision(True, "no champion yet")
    cand, champ = _metric(candidate, metric), _metric(champion, metric)
    if np.isnan(cand):
        return PromotionDecision(False, f"the new version has no {metric}")
    if not np.isnan(champ) and cand < champ:
        return PromotionDecision(False, f"{metric} {cand:.4f} < champion's {champ:.4f}")
    if np.isnan(champ) or cand > champ:
        return PromotionDecision(True, f"{metric} {cand:.4f} > champion's {champ:.4f}")
    cand_t, champ_t = _metric(candidate, tiebreak), _metric(champion, tiebreak)
    if not np.isnan(cand_t) and not np.isnan(champ_t) and cand_t < champ_t:
        return PromotionDecision(
            False, f"{metric} tied at {cand:.4f} and {tiebreak} {cand_t:.4f} < champion's {champ_t:.4f}"
        )
    return PromotionDecision(
        True, f"{metric} tied at {cand:.4f}; {tiebreak} {cand_t:.4f} >= champion's {champ_t:.4f}"
    )


def with_field_gate(decision: PromotionDecision, passes: bool, reason: str) -> PromotionDecision:
    """The metric decision, refused as well when the candidate fails on the field set (reviewed line
    images: a confirmed defect the champion catches and it misses, or more false alarms on held-out
    reviewed goods); `reason` says how it did there."""
    if not passes:
        also = "" if decision.promote else f"; and {decision.reason}"
        return PromotionDecision(False, f"{reason}{also}")
    return PromotionDecision(decision.promote, f"{decision.reason}; {reason}")


def record_promotion(
    name: str, version: str, previous: str | None, reason: str, who: str, forced: bool
) -> None:
    """Give `version` of `name` the champion alias and record who, when, why and what it replaced; a
    challenger is always older than (or is) the new champion, so that alias goes."""
    set_alias(name, CHAMPION, version)
    delete_alias(name, CHALLENGER)
    set_model_version_tags(
        name,
        version,
        {
            "promoted_by": who,
            "promotion_reason": reason,
            "promoted_at": _now(),
            "promotion_forced": str(bool(forced)).lower(),
            "previous_champion": "none" if previous is None else str(previous),
        },
    )


def record_challenger(name: str, version: str, reason: str, who: str) -> None:
    """Give `version` of `name` the challenger alias (the champion stays) and record why."""
    set_alias(name, CHALLENGER, version)
    set_model_version_tags(
        name, version, {"challenger_reason": reason, "challenger_since": _now(), "challenger_set_by": who}
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
