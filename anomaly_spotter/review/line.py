"""The dashboard's line review: which scored images of the line a reviewer sees, and what they decide.

It reads a scoring log (`anomaly-spotter predict|score-spark|serve --log LOG`, `serving.scoring_log`) and
the feedback already recorded (`feedback/<category>/decisions.csv`, `anomaly_spotter.feedback`), relative
to the repository root (the dashboard's working directory):

- an image scored several times is shown once, as its latest log row (the verdict the line applies now);
- an image is *decided* when the category's feedback holds a decision in force for its sha256 (the latest
  one: `feedback.current_decisions`), whichever log or reviewer it came from;
- the flagged images not yet decided, highest score first, and a seeded sample of the passed ones (an
  image's place in the sample depends on the seed and its content hash only, so deciding one image
  brings in the next rather than reshuffling the sample);
- the picture of a row is the overlay its model version draws (`ServiceModel.score(return_map=True)`,
  what `predict --out` writes): the version is loaded read-only from the registry, never written to.

Recording (`record`) copies the image into feedback/<category>/ with the decision (`record_decision`) and
starts DVC versioning of the folder on its first decision (`track_with_dvc`). The Streamlit page is
`app.py` (`line_page`); this module does not import Streamlit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_spotter.core.config import PARAMS_FILE, Params, load_params
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.core.scoring import SCORES_FILE
from anomaly_spotter.data.index import GOOD
from anomaly_spotter.feedback import (
    CONFIRMED_DEFECT,
    FALSE_ALARM,
    MISSED_DEFECT,
    allowed_decisions,
    current_decisions,
    feedback_dir,
    read_decisions,
    record_decision,
    track_with_dvc,
)
from anomaly_spotter.feedback.store import DVC_SUFFIX, FeedbackError
from anomaly_spotter.pipeline import paths
from anomaly_spotter.serving import scoring_log

LOGS_ROOT = Path("logs")  # `logs/<category>`: where the docs' `predict --log` examples write
FLAGGED = "defective"  # the log's verdict of a flagged image
SAMPLE_SIZE = 12  # passed images shown by default
MAX_SAMPLE = 60
DECISION_LABELS = {
    FALSE_ALARM: "false alarm",
    CONFIRMED_DEFECT: "confirmed defect",
    MISSED_DEFECT: "missed defect",
}
# what a reviewer can decide about an image, by the verdict it got on the line
# the decision in force, joined to the log rows (the feedback's own columns, renamed)
DECIDED_COLUMNS = {
    "decision": "decision",
    "reviewer": "decided_by",
    "decided_at": "decided_at",
    "defect_type": "decided_type",
    "note": "decided_note",
}
SUMMARY_COLUMNS = (
    "category",
    "log rows",
    "images scored",
    "flagged",
    "passed",
    "decided",
    "flagged to decide",
    "model versions",
    "last scored (UTC)",
)


class LineReviewError(AnomalySpotterError):
    """The line review cannot show or record something: no log, an image gone, no reviewer."""


# --------------------------------------------------------------------------------------------------
# the repository's settings
# --------------------------------------------------------------------------------------------------


def line_params(root: Path) -> Params:
    """params.yaml of the repository (its defaults when there is none: a line station may hold no
    pipeline outputs); ConfigError naming the file when it is invalid."""
    path = Path(root) / PARAMS_FILE
    return load_params(path) if path.is_file() else Params()


def feedback_root(root: Path, params: Params) -> Path:
    """The feedback folder (`feedback.root`, relative to the repository root)."""
    configured = Path(params.feedback.root)
    return configured if configured.is_absolute() else Path(root) / configured


def default_log(root: Path, query_log: str | None, categories: list[str]) -> str:
    """The log folder the page starts with: the `?log=` query parameter, else `logs/<category>` of the
    first category (in `categories` order) that has one, else "" (the reviewer types it)."""
    if query_log:
        return str(query_log)
    for category in categories:
        if (Path(root) / LOGS_ROOT / category).is_dir():
            return (LOGS_ROOT / category).as_posix()
    return ""


# --------------------------------------------------------------------------------------------------
# which rows to show
# --------------------------------------------------------------------------------------------------


def latest_rows(log: pd.DataFrame) -> pd.DataFrame:
    """One row per scored image (category, image_sha256): its latest scoring (`read_log` sorts oldest
    first), i.e. the verdict the line gives it now."""
    latest = log.drop_duplicates(["category", "image_sha256"], keep="last")
    return latest.reset_index(drop=True)


def category_decisions(feedback: Path, category: str) -> pd.DataFrame:
    """The decisions in force in a category's feedback folder (empty when there is none yet)."""
    return current_decisions(read_decisions(feedback_dir(feedback, category)))


def with_decisions(rows: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """`rows` (one category's latest rows) with the decision in force for each image joined on sha256:
    columns decision (empty when undecided), decided_by, decided_at, decided_type, decided_note."""
    decided = decisions.reindex(columns=["image_sha256", *DECIDED_COLUMNS]).rename(columns=DECIDED_COLUMNS)
    merged = rows.merge(decided, on="image_sha256", how="left")
    for column in DECIDED_COLUMNS.values():
        merged[column] = merged[column].fillna("").astype(str)
    return merged


def is_decided(rows: pd.DataFrame) -> pd.Series:
    return rows["decision"] != ""


def flagged_to_decide(rows: pd.DataFrame) -> pd.DataFrame:
    """The flagged images without a decision, highest score first."""
    todo = rows[(rows["verdict"] == FLAGGED) & ~is_decided(rows)]
    return todo.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def sample_rank(digest: str, seed: int) -> int:
    """An image's place in the seeded sample: fixed by the seed and its content hash only."""
    return int(hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest()[:15], 16)


def passed_sample(rows: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """Up to `size` passed images without a decision, chosen by `seed` (`sample_rank`), highest score
    first. Deciding one brings in the next of the same order; the others stay."""
    passed = rows[(rows["verdict"] != FLAGGED) & ~is_decided(rows)]
    ranks = passed["image_sha256"].map(lambda d: sample_rank(str(d), seed))
    chosen = passed.loc[ranks.sort_values(kind="stable").index[: max(size, 0)]]
    return chosen.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def decided_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The images of this log with a decision in force, the latest decided first."""
    done = rows[is_decided(rows)]
    return done.sort_values("decided_at", ascending=False, kind="stable").reset_index(drop=True)


def page_count(n: int, per_page: int) -> int:
    return max(1, -(-n // per_page))


def page_rows(rows: pd.DataFrame, page: int, per_page: int) -> pd.DataFrame:
    """Page `page` (from 1) of `rows`, `per_page` a page."""
    return rows.iloc[(page - 1) * per_page : page * per_page]


def summary(log: pd.DataFrame, feedback: Path) -> pd.DataFrame:
    """Per category in the log: its rows, images scored (distinct), flagged and passed (by each image's
    latest verdict), decided (with a decision in force in the category's feedback), flagged images left
    to decide, the model versions that scored them and the last time one was scored."""
    latest = latest_rows(log)
    rows = []
    for category in sorted(latest["category"].astype(str).unique()):
        mine = with_decisions(latest[latest["category"] == category], category_decisions(feedback, category))
        flagged = mine["verdict"] == FLAGGED
        in_log = log[log["category"] == category]
        versions = sorted(
            {model_label(r) for r in in_log[["model_name", "model_version", "model_uri"]].to_dict("records")}
        )
        rows.append(
            {
                "category": category,
                "log rows": len(in_log),
                "images scored": len(mine),
                "flagged": int(flagged.sum()),
                "passed": int((~flagged).sum()),
                "decided": int(is_decided(mine).sum()),
                "flagged to decide": int((flagged & ~is_decided(mine)).sum()),
                "model versions": ", ".join(versions),
                "last scored (UTC)": _time(in_log["scored_at"].max()),
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _time(value: Any) -> str:
    if value is None or value == "" or pd.isna(value):
        return "-"
    return pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S")


def known_defect_types(root: Path, params: Params, feedback: Path, category: str) -> list[str]:
    """The defect types a reviewer is offered: those already used in the category's feedback, the test
    defect types of its dataset (`<data.root>/<category>/test/<type>/`) and of its pipeline outputs
    (`outputs/<category>/scores.csv`), where present."""
    types = set(read_decisions(feedback_dir(feedback, category))["defect_type"].astype(str))
    test = Path(root) / params.data.root / category / "test"
    if test.is_dir():
        types |= {p.name for p in test.iterdir() if p.is_dir()}
    scores = Path(root) / paths.outputs_dir(category) / SCORES_FILE
    if scores.is_file():
        table = pd.read_csv(scores, usecols=["defect_type", "label"], keep_default_na=False)
        types |= set(table.loc[table["label"] == 1, "defect_type"].astype(str))
    return sorted(t for t in types if t and t != GOOD)


# --------------------------------------------------------------------------------------------------
# one row: its model, its image, its picture
# --------------------------------------------------------------------------------------------------


def model_uri(row: Mapping[str, Any]) -> str:
    """The model version that scored a row: `models:/<name>/<version>`, or the row's model_uri for a model
    folder (no registered name)."""
    name, version = str(row.get("model_name") or ""), str(row.get("model_version") or "")
    if name and version:
        return f"models:/{name}/{version}"
    return str(row["model_uri"])


def model_label(row: Mapping[str, Any]) -> str:
    name, version = str(row.get("model_name") or ""), str(row.get("model_version") or "")
    return f"{name} v{version}" if name and version else str(row.get("model_uri") or "-")


def load_model(uri: str) -> Any:
    """The model at `uri`, as `predict` loads it (an exported folder with ONNX Runtime, anything else
    through MLflow), read-only: the registry is only read. AnomalySpotterError naming the URI when it
    cannot be loaded."""
    from anomaly_spotter import tracking
    from anomaly_spotter.serving import edge

    if edge.is_edge_model(uri):
        return edge.load_edge_model(Path(uri))
    from anomaly_spotter.serving.model import load_service_model

    tracking.connect_for_model(uri)
    return load_service_model(uri)


def image_path(log_dir: Path, row: Mapping[str, Any]) -> Path:
    """The file a row scored (`scoring_log.image_file`); LineReviewError naming it when it is gone."""
    path = scoring_log.image_file(Path(log_dir), str(row["image"]))
    if not path.is_file():
        raise LineReviewError(
            f"{path}: image file not found (the scoring log {log_dir} names {row['image']}); it was moved or "
            "deleted since it was scored, so it cannot be shown or kept as feedback"
        )
    return path


def scored_image(log_dir: Path, row: Mapping[str, Any]) -> np.ndarray:
    """The image a row scored, as uint8 RGB; LineReviewError when the file is gone or changed since."""
    from anomaly_spotter.serving.inference import decode_image, read_file

    path = image_path(log_dir, row)
    data = read_file(path)
    digest = scoring_log.sha256_hex(data)
    if row.get("image_sha256") and digest != row["image_sha256"]:
        raise LineReviewError(
            f"{path}: the file changed since it was scored (sha256 {digest[:12]}..., the log says "
            f"{str(row['image_sha256'])[:12]}...); score it again to review it"
        )
    return decode_image(data, str(path))


def overlay(model: Any, image: np.ndarray, title: str) -> np.ndarray:
    """The overlay `predict --out` writes for `image`: the model's map, region, verdict and score."""
    return model.score([image], return_map=True, titles=[title])[0]["overlay"]


def caption(row: Mapping[str, Any]) -> str:
    """What a tile says: the image, score, threshold, verdict, model version, time; and its decision."""
    text = (
        f"{short_name(row['image'])} · score {float(row['score']):.3f} / threshold "
        f"{float(row['threshold']):.3f} ({row['verdict']}) · {model_label(row)} · "
        f"{_time(row['scored_at'])} UTC"
    )
    return f"{text}\n\n{decision_text(row)}" if row.get("decision") else text


def short_name(image: Any) -> str:
    """A scored image as its folder and file name (`hole/004.png`): the name alone repeats across folders."""
    path = Path(str(image))
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def decision_text(row: Mapping[str, Any]) -> str:
    """The decision in force, as a line: what (and the defect type), who, when, the note."""
    what = DECISION_LABELS.get(str(row["decision"]), str(row["decision"]))
    kind = f" ({row['decided_type']})" if row.get("decided_type") else ""
    note = f": {row['decided_note']}" if row.get("decided_note") else ""
    return f"decided: **{what}{kind}** by {row['decided_by']} at {row['decided_at']}{note}"


def choices(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The decisions a reviewer can record for an image, by its verdict on the line."""
    return allowed_decisions(str(row["verdict"]))


# --------------------------------------------------------------------------------------------------
# recording a decision
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """A decision written: the decisions.csv row, the folder, the .dvc file made now (None: it existed,
    or DVC failed: `dvc_error`)."""

    row: dict[str, str]
    folder: Path
    dvc_file: str | None
    dvc_error: str | None
    next_step: str


def record(
    root: Path,
    feedback: Path,
    log_dir: Path,
    row: Mapping[str, Any],
    decision: str,
    reviewer: str,
    defect_type: str = "",
    note: str = "",
) -> Recorded:
    """Record `decision` about a log row: `record_decision` (the image copied into the category's feedback
    folder, a decisions.csv row naming the reviewer, the model version and the log), then
    `track_with_dvc` in the repository `root`. A DVC failure does not undo the decision: it is returned
    in `dvc_error`. LineReviewError / FeedbackError naming what to do when nothing can be recorded."""
    if not reviewer.strip():
        raise LineReviewError(
            "enter your name as reviewer in the sidebar: it is recorded with every decision"
        )
    if decision not in choices(row):
        allowed = ", ".join(DECISION_LABELS[d] for d in choices(row))
        raise LineReviewError(f"an image the line judged {row['verdict']} can be decided as: {allowed}")
    category = str(row["category"])
    scored = {k: _plain(row[k]) for k in scoring_log.LOG_COLUMNS} | {"scoring_log": str(log_dir)}
    written = record_decision(
        feedback, category, image_path(log_dir, row), decision, reviewer, defect_type or "", note, scored
    )
    dvc_file = dvc_error = None
    root = Path(root).resolve()
    try:
        dvc_file = track_with_dvc(feedback, category, root)
    except FeedbackError as err:  # not a DVC repository, the folder outside it, or dvc add failed
        dvc_error = str(err)
    folder = feedback_dir(feedback, category)
    return Recorded(written, folder, dvc_file, dvc_error, next_step(root, folder, dvc_file))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def next_step(root: Path, folder: Path, dvc_file: str | None) -> str:
    """What to run after a decision: retrain on it, then keep the data version in git."""
    folder = _relative(folder, root)
    tracked = _relative(Path(f"{folder}{DVC_SUFFIX}"), root)
    started = (
        f"DVC versions {folder} from now on ({tracked}, and {folder.parent}/.gitignore). " if dvc_file else ""
    )
    return (
        f"{started}Next: run `dvc repro` to retrain on it (it re-adds {folder} and reruns prepare; only "
        f"this category retrains), then `git add {tracked} dvc.lock` and commit, and `dvc push` so the "
        "team has the images."
    )


def _relative(path: Path, root: Path) -> Path:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return Path(path)
