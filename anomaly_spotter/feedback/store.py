"""The feedback folder of a category: recording decisions, reading them, and the index rows they give."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from anomaly_spotter.core.errors import AnomalySpotterError, DatasetError
from anomaly_spotter.data.index import FIELD_SPLIT, GOOD, INDEX_COLUMNS

FEEDBACK_ROOT = Path("feedback")
DECISIONS_FILE = "decisions.csv"
IMAGES_DIR = "images"
FALSE_ALARM = "false_alarm"
CONFIRMED_DEFECT = "confirmed_defect"
MISSED_DEFECT = "missed_defect"
DECISIONS = (FALSE_ALARM, CONFIRMED_DEFECT, MISSED_DEFECT)
# the defect type of a missed defect the reviewer did not name
UNNAMED_DEFECT = "missed"
DECISION_COLUMNS = (
    "decided_at",  # UTC, ISO 8601
    "reviewer",
    "decision",  # one of DECISIONS
    "defect_type",  # empty for a false alarm
    "note",
    "image_sha256",
    "image_file",  # the copy in this folder: images/<sha256>.<ext>
    "source_image",  # what the scoring log named (path or URI)
    "scoring_log",
    "model_name",
    "model_version",
    "score",
    "threshold",
    "verdict",
)
# a decision's image: the copy in the folder, named by its sha256 (nothing outside the folder)
IMAGE_FILE = re.compile(r"images/[0-9a-f]{64}\.[A-Za-z0-9]{1,5}")
# feedback/<category>.dvc: what `dvc add` writes beside the folder
DVC_SUFFIX = ".dvc"


class FeedbackError(AnomalySpotterError):
    """A decision cannot be recorded, or a feedback folder cannot be read."""


def feedback_dir(root: Path, category: str) -> Path:
    return Path(root) / category


def record_decision(
    feedback_root: Path,
    category: str,
    image: Path,
    decision: str,
    reviewer: str,
    defect_type: str = "",
    note: str = "",
    scored: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Copy `image` into the category's feedback folder (once per content) and append the decision.

    `scored`: the scoring log row the decision is about (image, image_sha256, model_name, model_version,
    score, threshold, verdict, and `scoring_log`, the log folder), recorded with it. The image's sha256 is
    computed from the file and must match the log's when given: a file changed since it was scored is
    refused. Returns the row appended. FeedbackError naming the file or the value when anything is off.
    """
    if decision not in DECISIONS:
        raise FeedbackError(f"decision {decision!r}: use one of {', '.join(DECISIONS)}")
    defect_type = defect_type.strip()
    if decision == CONFIRMED_DEFECT and not defect_type:
        raise FeedbackError("a confirmed defect needs its defect type (e.g. scratch, stain)")
    if decision == FALSE_ALARM:
        defect_type = ""
    if defect_type and (defect_type == GOOD or not defect_type.replace("_", "").replace("-", "").isalnum()):
        raise FeedbackError(
            f"defect type {defect_type!r}: use letters, digits, '_' or '-' (and not 'good'), e.g. scratch"
        )
    if not reviewer.strip():
        raise FeedbackError("who decides? the reviewer's name is recorded with every decision")
    image = Path(image)
    try:
        data = image.read_bytes()
    except OSError as err:
        raise FeedbackError(f"{image}: cannot read the image to keep it ({err.strerror or err})") from err
    digest = hashlib.sha256(data).hexdigest()
    scored = dict(scored or {})
    logged = scored.get("image_sha256")
    if logged and logged != digest:
        raise FeedbackError(
            f"{image}: the file changed since it was scored (sha256 {digest[:12]}..., the log says "
            f"{str(logged)[:12]}...); review the image as it was scored"
        )
    folder = feedback_dir(feedback_root, category)
    relative = Path(IMAGES_DIR) / f"{digest}{image.suffix.lower() or '.png'}"
    row = {
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reviewer": reviewer.strip(),
        "decision": decision,
        "defect_type": defect_type,
        "note": note.strip(),
        "image_sha256": digest,
        "image_file": relative.as_posix(),
        "source_image": str(scored.get("image", image)),
        "scoring_log": str(scored.get("scoring_log", "")),
        "model_name": str(scored.get("model_name", "")),
        "model_version": str(scored.get("model_version", "")),
        "score": _text(scored.get("score")),
        "threshold": _text(scored.get("threshold")),
        "verdict": str(scored.get("verdict", "")),
    }
    try:
        (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        target = folder / relative
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            shutil.copyfile(image, tmp)
            os.replace(tmp, target)
        _append_row(folder / DECISIONS_FILE, row)
    except OSError as err:
        raise FeedbackError(f"{folder}: cannot record the decision ({err.strerror or err})") from err
    return row


def allowed_decisions(verdict: str) -> tuple[str, ...]:
    """What a reviewer can decide about an image the line judged `verdict`: a flagged one is a false
    alarm or a confirmed defect, a passed one a missed defect."""
    return (FALSE_ALARM, CONFIRMED_DEFECT) if verdict == "defective" else (MISSED_DEFECT,)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _append_row(path: Path, row: Mapping[str, str]) -> None:
    """Append one row under an exclusive lock (two reviewers at once each get their line), with the header
    when the file is new."""
    with open(path, "a", newline="") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            writer = csv.DictWriter(handle, fieldnames=DECISION_COLUMNS, lineterminator="\n")
            if os.fstat(handle.fileno()).st_size == 0:  # (tell() is 0 in every handle opened before)
                writer.writeheader()
            writer.writerow(dict(row))
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_decisions(folder: Path) -> pd.DataFrame:
    """Every decision recorded in a category's feedback folder, in the order made (none: empty frame).
    DatasetError naming the file when it is not a decisions file or names an image that is missing."""
    path = Path(folder) / DECISIONS_FILE
    if not path.is_file():
        return pd.DataFrame(columns=list(DECISION_COLUMNS))
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetError(
            f"{path}: not a readable decisions file ({err}); restore it with `dvc checkout`"
        ) from err
    missing = [c for c in DECISION_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: lacks columns {missing}; restore it with `dvc checkout`")
    bad = frame[~frame["decision"].isin(DECISIONS)]
    if len(bad):
        raise DatasetError(
            f"{path}: line {int(bad.index[0]) + 2} has decision {bad['decision'].iloc[0]!r}; "
            f"use one of {', '.join(DECISIONS)}"
        )
    for line, (image_file, digest) in enumerate(zip(frame["image_file"], frame["image_sha256"], strict=True)):
        if not IMAGE_FILE.fullmatch(image_file) or not image_file.startswith(f"{IMAGES_DIR}/{digest}."):
            raise DatasetError(
                f"{path}: line {line + 2} names image {image_file!r}; a decision's image is the copy "
                f"{IMAGES_DIR}/<its sha256>.<ext> in this folder: restore the file with `dvc checkout`"
            )
        if not (Path(folder) / image_file).is_file():
            raise DatasetError(
                f"{Path(folder) / image_file}: a decision names this image but it is missing; restore the "
                "folder with `dvc checkout` (or `dvc pull`)"
            )
    return frame


def current_decisions(decisions: pd.DataFrame) -> pd.DataFrame:
    """The decision in force for each image: its latest (rows in file order), one row per image_sha256."""
    if decisions.empty:
        return decisions
    return decisions.drop_duplicates("image_sha256", keep="last").reset_index(drop=True)


def share(digest: str, purpose: str) -> float:
    """A number in [0, 1) fixed by an image's content hash and a purpose: which share it falls in."""
    return int(hashlib.sha256(f"{purpose}:{digest}".encode()).hexdigest()[:12], 16) / 16**12


def feedback_rows(folder: Path, category: str, val_fraction: float, holdout_fraction: float) -> pd.DataFrame:
    """The index rows (data.index.INDEX_COLUMNS) the current decisions of a category's feedback folder
    give: reviewed goods in train / val / field, confirmed and missed defects in field (see the package
    docstring). Image paths are the copies in the folder."""
    decisions = current_decisions(read_decisions(folder))
    rows = []
    for d in decisions.itertuples():
        image = Path(folder) / d.image_file
        if hashlib.sha256(image.read_bytes()).hexdigest() != d.image_sha256:
            raise DatasetError(
                f"{image}: its content is not the image that was reviewed (sha256 {d.image_sha256}); restore "
                "it with `dvc checkout`"
            )
        good = d.decision == FALSE_ALARM
        if good:
            if share(d.image_sha256, "holdout") < holdout_fraction:
                split = FIELD_SPLIT
            else:
                split = "val" if share(d.image_sha256, "val") < val_fraction else "train"
        else:
            split = FIELD_SPLIT
        defect_type = GOOD if good else (d.defect_type or UNNAMED_DEFECT)
        rows.append(
            {
                "category": category,
                "split": split,
                "defect_type": defect_type,
                "label": int(not good),
                "image_path": str(Path(folder) / d.image_file),
                "mask_path": "",
                "has_mask": int(good),
            }
        )
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS))


def track_with_dvc(feedback_root: Path, category: str, repo: Path) -> str | None:
    """`dvc add feedback/<category>` the first time a category gets feedback, so DVC versions it (later
    changes are re-added by `dvc repro`). Returns the .dvc file written, or None when it existed already.
    FeedbackError with DVC's message when it fails."""
    folder = feedback_dir(feedback_root, category)
    dvc_file = folder.with_name(folder.name + DVC_SUFFIX)
    if dvc_file.is_file():
        return None
    repo = Path(repo).resolve()
    try:
        relative = folder.resolve().relative_to(repo)
    except ValueError:
        raise FeedbackError(f"{folder} is outside {repo}: DVC does not version it from there") from None
    if not any((parent / ".dvc").is_dir() for parent in (repo, *repo.parents)):
        raise FeedbackError(
            f"{repo} is not a DVC repository (no .dvc folder): run `dvc init` there, then "
            f"`dvc add {relative}`"
        )
    result = subprocess.run(
        ["dvc", "add", "--quiet", str(relative)],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    if result.returncode != 0:
        raise FeedbackError(
            f"dvc add {folder} failed: {(result.stderr or result.stdout).strip()[-500:]}; "
            "run it yourself in the repository"
        )
    return str(dvc_file)
