"""The field gate of `anomaly-spotter promote`: challenger and champion on what reviewers already decided.

Both service models score the category's current field set (reviewed line images held out of training:
confirmed and missed defects, held-out reviewed goods), each at its own served threshold. The challenger
is refused when it misses a defect the champion catches, or when it flags more of the held-out reviewed
goods than the champion does. Every version is judged on the same images: the field set's goods are
chosen by content hash, so no version trained on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from anomaly_spotter.data.index import FIELD_SPLIT
from anomaly_spotter.feedback.store import feedback_dir, feedback_rows

SCORE_CHUNK = 16


def field_set(
    feedback_root: Path, category: str, val_fraction: float, holdout_fraction: float
) -> pd.DataFrame:
    """The category's field set as index rows (image_path, label, defect_type); empty without feedback."""
    folder = feedback_dir(feedback_root, category)
    if not folder.is_dir():
        return pd.DataFrame(columns=["image_path", "label", "defect_type"])
    rows = feedback_rows(folder, category, val_fraction, holdout_fraction)
    return rows[rows["split"] == FIELD_SPLIT].reset_index(drop=True)


def verdicts(model: Any, paths: Sequence[str]) -> list[bool]:
    """Whether `model` (a service model: `.score`) flags each image file, at its own threshold."""
    from anomaly_spotter.serving.inference import read_image

    flagged: list[bool] = []
    for start in range(0, len(paths), SCORE_CHUNK):
        images = [read_image(Path(p)) for p in paths[start : start + SCORE_CHUNK]]
        flagged += [row["verdict"] == "defective" for row in model.score(images)]
    return flagged


@dataclass(frozen=True)
class FieldComparison:
    """Champion and challenger on the field set, each at its own threshold."""

    n_defective: int
    n_good: int
    champion_detected: int
    challenger_detected: int
    champion_false_alarms: int
    challenger_false_alarms: int
    newly_missed: list[str] = field(default_factory=list)  # defects the champion catches, the challenger not
    newly_flagged: list[str] = field(default_factory=list)  # held-out goods only the challenger flags

    @property
    def passes(self) -> bool:
        return not self.newly_missed and self.challenger_false_alarms <= self.champion_false_alarms

    def reason(self) -> str:
        """One line: why the challenger passes or is refused on the field set."""
        counts = (
            f"field set: it detects {self.challenger_detected}/{self.n_defective} confirmed defects "
            f"(champion {self.champion_detected}) and flags {self.challenger_false_alarms}/{self.n_good} "
            f"held-out reviewed goods (champion {self.champion_false_alarms})"
        )
        problems = []
        if self.newly_missed:
            names = ", ".join(Path(p).name for p in self.newly_missed[:5])
            more = f" and {len(self.newly_missed) - 5} more" if len(self.newly_missed) > 5 else ""
            problems.append(f"misses {len(self.newly_missed)} the champion catches ({names}{more})")
        if self.challenger_false_alarms > self.champion_false_alarms:
            problems.append("raises more false alarms on held-out reviewed goods")
        return f"{counts}; " + ("; ".join(problems) if problems else "no worse than the champion")

    def table(self) -> str:
        rows = [
            ("confirmed defects detected", self.challenger_detected, self.champion_detected),
            ("held-out reviewed goods flagged", self.challenger_false_alarms, self.champion_false_alarms),
        ]
        totals = (self.n_defective, self.n_good)
        lines = [f"{'field set':32}  {'new':>9}  {'champion':>9}"]
        lines += [
            f"{name:32}  {f'{a}/{n}':>9}  {f'{b}/{n}':>9}"
            for (name, a, b), n in zip(rows, totals, strict=True)
        ]
        return "\n".join(lines)


def compare_on_field(challenger: Any, champion: Any, field_rows: pd.DataFrame) -> FieldComparison:
    """Score the field set with both service models and compare their verdicts image by image."""
    paths = [str(p) for p in field_rows["image_path"]]
    labels = field_rows["label"].astype(int).tolist()
    new, old = verdicts(challenger, paths), verdicts(champion, paths)
    defect = [lab == 1 for lab in labels]
    judged = list(zip(paths, new, old, defect, strict=True))
    return FieldComparison(
        n_defective=sum(defect),
        n_good=len(labels) - sum(defect),
        champion_detected=sum(o and d for o, d in zip(old, defect, strict=True)),
        challenger_detected=sum(n and d for n, d in zip(new, defect, strict=True)),
        champion_false_alarms=sum(o and not d for o, d in zip(old, defect, strict=True)),
        challenger_false_alarms=sum(n and not d for n, d in zip(new, defect, strict=True)),
        newly_missed=[p for p, n, o, d in judged if d and o and not n],
        newly_flagged=[p for p, n, o, d in judged if not d and n and not o],
    )
