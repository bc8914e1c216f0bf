"""The review dashboard's data: what `anomaly-spotter dashboard` shows, computed from the pipeline's outputs.

Nothing is rescored. For one category it reads, relative to the repository root:

- `outputs/<c>/scores.csv` (validation and test images, their scores), the raw maps beside it and
  `region.json` (the region rule and the model's pixel calibration), all from `process_all`;
- `data/prepared/<c>/` (the images the maps belong to and the ground-truth masks), from `prepare`;
- `metrics/thresholds.json` (the calibrated thresholds, from `compute_thresholds`) and `params.yaml`
  (`registry.threshold`: which one is deployed; `thresholds.recall_target`; `process.image_score`).

Precision, recall, F1 and "defects detected k/n" at any threshold come from `thresholds.evaluate_threshold`,
the function `compute_thresholds` evaluates its thresholds with (per defect type: that type's defects
against the category's good images, as there). The gallery's pictures are `overlay.render_overlay`'s, the
overlay `predict --out` and the served model draw, at the chosen threshold, with the ground truth outlined.

A threshold proposal (`write_proposal`) goes to `proposals/<category>.json` and, when the registered
version built from these outputs is found, to tags `threshold_proposal*` on it. It never changes the
deployed threshold: that stays the one `register` packaged into the service model.

Comparing two registered versions reads what each logged: its headline metric and threshold tags, and the
`scores.csv` artifact of its `run.process_all` run. The Streamlit page itself is `app.py`; this
module does not import Streamlit.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_spotter import tracking
from anomaly_spotter.core.anomaly_map import RegionRule
from anomaly_spotter.core.config import PARAMS_FILE, Params, load_params
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.core.metrics import ratio
from anomaly_spotter.core.overlay import HEADER_PX, category_scale, display_size, outline_at, render_overlay
from anomaly_spotter.core.plots import pr_points, roc_points
from anomaly_spotter.core.scoring import REGION_FILE, SCORES_FILE, load_region, map_path
from anomaly_spotter.core.thresholds import ServedThreshold, evaluate_threshold, served_threshold
from anomaly_spotter.data.images import read_rgb
from anomaly_spotter.data.prepared import PreparedCategory, load_prepared
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.results import JSON_DECIMALS, k_of_n, write_json
from anomaly_spotter.tracking.scores import run_scores

APP_FILE = Path(__file__).with_name("app.py")
DEFAULT_PORT = 8501
DEFAULT_HOST = "127.0.0.1"
PROPOSALS_ROOT = Path("proposals")
EXTRA_HINT = "pip install -e '.[dashboard]'"
# What a tile says about an image at the chosen threshold (label 1 = defective, flagged iff score > t).
DETECTED = "detected"
MISSED = "missed defect"
FALSE_ALARM = "false alarm"
PASSED = "passed (good)"
OUTCOMES = (MISSED, FALSE_ALARM, DETECTED, PASSED)
TILES_PER_PAGE = 12  # gallery pictures per page
GT_OUTLINE_RGB = (0, 255, 0)  # the ground truth, beside the predicted region's cyan (plots: "lime")
# Tags a proposal sets on the registered version (the deployed `threshold` tag is never touched).
PROPOSAL_TAG = "threshold_proposal"
# The metrics of a registered version the comparison page lists, from its tags (register writes them).
VERSION_METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1")
VERSION_FACTS = ("threshold", "threshold_method", "detector", "image_size", "git_commit", "data_dvc_hash")


class DashboardError(AnomalySpotterError):
    """The dashboard cannot show something: pipeline outputs or a registered version are missing."""


# --------------------------------------------------------------------------------------------------
# one category's pipeline outputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryReview:
    """What the pipeline wrote about one category, as the dashboard reads it.

    `table`: scores.csv (validation and test rows: split, defect_type, label, image_path, has_mask, row,
    score, ...); `deployed`: the threshold `register` serves (registry.threshold); `recall_threshold`:
    the calibrated recall-target threshold (None for a category without defective test images).
    """

    root: Path
    category: str
    table: pd.DataFrame
    deployed: ServedThreshold
    recall_target: float
    recall_threshold: float | None
    good_only_threshold: float | None
    reduction: str
    region: RegionRule
    pixel_threshold: float | None
    good_max: float | None
    prepared: PreparedCategory

    @property
    def test(self) -> pd.DataFrame:
        return self.table[self.table["split"] == "test"]

    @property
    def defect_types(self) -> list[str]:
        return sorted(set(self.test.loc[self.test["label"] == 1, "defect_type"].astype(str)))


def _missing(what: Path, root: Path) -> DashboardError:
    return DashboardError(
        f"{what} not found under {root.absolute()}: no pipeline outputs to review; run `dvc repro` there "
        "first (README Quick start), or start the dashboard in the repository folder that has them"
    )


def _params(root: Path) -> Params:
    if not (root / PARAMS_FILE).is_file():
        raise _missing(PARAMS_FILE, root)
    return load_params(root / PARAMS_FILE)


def pipeline_categories(root: Path) -> list[str]:
    """The categories of params.yaml whose pipeline outputs are present (scores and thresholds).

    Raises DashboardError, naming the command to run, when there are none."""
    categories = _params(root).data.categories
    if not (root / paths.THRESHOLDS_JSON).is_file():
        raise _missing(paths.THRESHOLDS_JSON, root)
    found = [c for c in categories if (root / paths.outputs_dir(c) / SCORES_FILE).is_file()]
    if not found:
        raise _missing(paths.outputs_dir(categories[0]) / SCORES_FILE, root)
    return found


def load_review(root: Path, category: str) -> CategoryReview:
    """Read one category's outputs (see the module docstring); DashboardError if one is missing."""
    params = _params(root)
    out = root / paths.outputs_dir(category)
    for needed in (out / SCORES_FILE, out / REGION_FILE, root / paths.THRESHOLDS_JSON):
        if not needed.is_file():
            raise _missing(needed.relative_to(root), root)
    thresholds = json.loads((root / paths.THRESHOLDS_JSON).read_text())
    if category not in thresholds:
        raise DashboardError(
            f"{paths.THRESHOLDS_JSON} has no category {category!r}; run `dvc repro` (compute_thresholds)"
        )
    entry = thresholds[category]
    calibration = json.loads((out / REGION_FILE).read_text()).get("calibration") or {}
    table = pd.read_csv(out / SCORES_FILE, keep_default_na=False)
    return CategoryReview(
        root=root,
        category=category,
        table=table,
        deployed=served_threshold(thresholds, category, params.registry.threshold),
        recall_target=params.thresholds.recall_target,
        recall_threshold=_optional_float((entry.get("recall_target") or {}).get("threshold")),
        good_only_threshold=_optional_float((entry.get("good_only") or {}).get("threshold")),
        reduction=params.process.image_score,
        region=load_region(out),
        pixel_threshold=_optional_float(calibration.get("threshold")),
        good_max=_optional_float(calibration.get("good_max")),
        prepared=load_prepared(root / paths.prepared_dir(category)),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------------------------------------------
# the numbers at a threshold
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """A category's test split judged at `threshold` (flagged iff score > threshold), as
    `evaluate_threshold` counts it; `per_defect`: one row per defect type (that type's defects against
    all good test images); the false-alarm rates are of the good test and the validation images."""

    threshold: float
    precision: float
    recall: float
    f1: float
    detected: int
    n_defective: int
    false_positives: int
    n_good: int
    false_alarm_rate: float
    val_false_alarms: int
    n_val: int
    val_false_alarm_rate: float
    per_defect: pd.DataFrame


def operating_point(review: CategoryReview, threshold: float) -> OperatingPoint:
    """Precision, recall, F1, defects detected (overall and per defect type) and false-alarm rates at
    `threshold`, computed by `thresholds.evaluate_threshold` on the test split."""
    test = review.test
    labels = test["label"].to_numpy()
    scores = test["score"].to_numpy(dtype=np.float64)
    types = test["defect_type"].astype(str).to_numpy()
    m = evaluate_threshold(labels, scores, threshold)
    rows = []
    for defect_type in review.defect_types:
        keep = (labels == 0) | (types == defect_type)
        d = evaluate_threshold(labels[keep], scores[keep], threshold)
        rows.append(
            {
                "defect type": defect_type,
                "detected": k_of_n(d["detected"], d["n_defective"]),
                "missed": d["n_defective"] - d["detected"],
                "recall": d["recall"],
                "precision": d["precision"],
                "F1": d["f1"],
            }
        )
    val = review.table[review.table["split"] == "val"]
    val_flagged = int((val["score"].to_numpy(dtype=np.float64) > threshold).sum())
    return OperatingPoint(
        threshold=float(threshold),
        precision=float(m["precision"]),
        recall=float(m["recall"]),
        f1=float(m["f1"]),
        detected=int(m["detected"]),
        n_defective=int(m["n_defective"]),
        false_positives=int(m["false_positives"]),
        n_good=int(m["n_good"]),
        false_alarm_rate=ratio(int(m["false_positives"]), int(m["n_good"])),
        val_false_alarms=val_flagged,
        n_val=len(val),
        val_false_alarm_rate=ratio(val_flagged, len(val)),
        per_defect=pd.DataFrame(
            rows, columns=["defect type", "detected", "missed", "recall", "precision", "F1"]
        ),
    )


def outcome(label: int, flagged: bool) -> str:
    """What a verdict means for an image of this label: detected, missed defect, false alarm, passed."""
    if label == 1:
        return DETECTED if flagged else MISSED
    return FALSE_ALARM if flagged else PASSED


def judged(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """`table` with columns verdict (defective iff score > threshold) and outcome."""
    flagged = table["score"].to_numpy(dtype=np.float64) > threshold
    return table.assign(
        verdict=np.where(flagged, "defective", "good"),
        outcome=[outcome(int(lab), bool(f)) for lab, f in zip(table["label"], flagged, strict=True)],
    )


def gallery(
    review: CategoryReview,
    threshold: float,
    splits: list[str] | None = None,
    defect_types: list[str] | None = None,
    outcomes: list[str] | None = None,
) -> pd.DataFrame:
    """The images to show, highest score first, judged at `threshold` and filtered by split, defect type
    ("good" included) and outcome (None: no filter)."""
    shown = judged(review.table, threshold)
    if splits is not None:
        shown = shown[shown["split"].isin(splits)]
    if defect_types is not None:
        shown = shown[shown["defect_type"].astype(str).isin(defect_types)]
    if outcomes is not None:
        shown = shown[shown["outcome"].isin(outcomes)]
    return shown.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def curves(review: CategoryReview) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test split's ROC and PR points (`plots.roc_points`, `plots.pr_points`, as `visualize` writes)."""
    labels = review.test["label"].to_numpy()
    scores = review.test["score"].to_numpy(dtype=np.float64)
    return roc_points(labels, scores), pr_points(labels, scores)


def threshold_range(review: CategoryReview) -> tuple[float, float]:
    """Slider bounds: where a threshold decides something about good parts. From the lowest score (or
    calibrated threshold) to the highest good score (or calibrated threshold), with a margin of 10 % of that
    span: above the last good score no false alarm is left, and the rare far-out defect (a score of 16 where
    the goods end at 1) would otherwise squeeze every decision into a sliver of the slider."""
    scores = review.table["score"].to_numpy(dtype=np.float64)
    goods = review.table.loc[review.table["label"] == 0, "score"].to_numpy(dtype=np.float64)
    thresholds = [review.deployed.threshold]
    thresholds += [t for t in (review.recall_threshold, review.good_only_threshold) if t is not None]
    lo = float(min(scores.min(initial=np.inf), *thresholds))
    hi = float(max(goods.max(initial=-np.inf), *thresholds))
    if not hi > lo:
        hi = float(max(scores.max(initial=lo), lo + 1.0))
    margin = 0.1 * (hi - lo)
    return lo - margin, hi + margin


# --------------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------------


def tile(review: CategoryReview, row: Any, threshold: float) -> np.ndarray:
    """RGB uint8 picture of one scores.csv row: `overlay.render_overlay` at `threshold` (the category's
    colour scale, verdict, score, predicted region in cyan) with the ground truth outlined in green."""
    raw_map = np.load(map_path(review.root / paths.outputs_dir(review.category), row))
    image = np.asarray(review.prepared.images[int(row.row)])
    scale = category_scale(review.pixel_threshold, review.good_max, threshold, review.reduction, raw_map)
    title = f"{row.defect_type}/{Path(row.image_path).name}"
    picture = render_overlay(image, raw_map, review.region.mask(raw_map), scale, row.score, threshold, title)
    if int(row.label) == 1 and int(row.has_mask):
        height, width = display_size(*image.shape[:2])
        edge = outline_at(np.asarray(review.prepared.masks[int(row.row)]), height, width)
        picture = picture.copy()
        picture[HEADER_PX : HEADER_PX + height, :width][edge] = GT_OUTLINE_RGB
    return picture


def caption(row: Any) -> str:
    return f"{row.split} · {row.defect_type} · score {row.score:.3f} · {row.verdict} ({row.outcome})"


# --------------------------------------------------------------------------------------------------
# threshold proposals
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """A threshold someone proposes for a category, with what it does on the test split."""

    category: str
    threshold: float
    deployed_threshold: float
    deployed_method: str
    recall_target_threshold: float | None
    precision: float
    recall: float
    f1: float
    detected: str
    false_alarms: str
    val_false_alarms: str
    proposed_by: str
    proposed_at: str
    note: str
    model_md5: str


def proposal_file(root: Path, category: str) -> Path:
    """Where the dashboard writes a category's threshold proposal."""
    return root / PROPOSALS_ROOT / f"{category}.json"


def make_proposal(
    review: CategoryReview, threshold: float, by: str | None = None, note: str = ""
) -> Proposal:
    """The proposal of `threshold` (rounded as thresholds.json rounds) for the reviewed category, with
    its numbers at that threshold."""
    from anomaly_spotter.tracking import current_user  # who: as `promote` records it

    threshold = round(float(threshold), JSON_DECIMALS)
    point = operating_point(review, threshold)
    model_file = review.root / paths.model_dir(review.category) / paths.MODEL_FILE
    return Proposal(
        category=review.category,
        threshold=threshold,
        deployed_threshold=review.deployed.threshold,
        deployed_method=review.deployed.method,
        recall_target_threshold=review.recall_threshold,
        precision=point.precision,
        recall=point.recall,
        f1=point.f1,
        detected=k_of_n(point.detected, point.n_defective),
        false_alarms=f"{point.false_positives}/{point.n_good}",
        val_false_alarms=f"{point.val_false_alarms}/{point.n_val}",
        proposed_by=by or current_user(),
        proposed_at=datetime.now(UTC).isoformat(timespec="seconds"),
        note=note,
        model_md5=tracking.content_md5(model_file) if model_file.is_file() else "unknown",
    )


def write_proposal(root: Path, proposal: Proposal) -> Path:
    """Write `proposal` to proposals/<category>.json (replacing an earlier one); returns the path."""
    path = proposal_file(root, proposal.category)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, asdict(proposal))
    return path


def read_proposal(root: Path, category: str) -> dict[str, Any] | None:
    path = proposal_file(root, category)
    return json.loads(path.read_text()) if path.is_file() else None


def proposal_tags(proposal: Proposal) -> dict[str, str]:
    """The tags a proposal sets on a registered version (never `threshold`, the deployed one)."""
    return {
        PROPOSAL_TAG: str(proposal.threshold),
        f"{PROPOSAL_TAG}_by": proposal.proposed_by,
        f"{PROPOSAL_TAG}_at": proposal.proposed_at,
        f"{PROPOSAL_TAG}_note": proposal.note or "-",
        f"{PROPOSAL_TAG}_metrics": (
            f"precision {proposal.precision:.3f}, recall {proposal.recall:.3f}, F1 {proposal.f1:.3f}, "
            f"detected {proposal.detected}, false alarms {proposal.false_alarms} (test split, in-sample)"
        ),
    }


def tag_proposal(proposal: Proposal) -> str:
    """Tag the registered version built from the reviewed model (newest with its `model_md5`) with the
    proposal; returns "<name> version <n>". DashboardError when the store or such a version is missing."""
    name = tracking.registered_model_name(proposal.category)
    tracking.use_existing_store(f"model {name}")
    versions = [
        v for v in tracking.model_versions(name) if v.tags.get(tracking.MODEL_MD5_TAG) == proposal.model_md5
    ]
    if not versions:
        raise DashboardError(
            f"no version of {name} in {tracking.tracking_uri()} was registered from this models/"
            f"{proposal.category}/model.pt (model_md5 {proposal.model_md5}); run `dvc repro` (register)"
        )
    version = str(versions[0].version)
    tracking.set_model_version_tags(name, version, proposal_tags(proposal))
    return f"{name} version {version}"


# --------------------------------------------------------------------------------------------------
# comparing two registered versions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRecord:
    """One registered version of `anomaly-spotter-<category>`: number, aliases, tags."""

    name: str
    version: str
    aliases: tuple[str, ...]
    tags: dict[str, str]

    @property
    def label(self) -> str:
        held = f" @{', @'.join(self.aliases)}" if self.aliases else ""
        return f"version {self.version}{held}"

    @property
    def threshold(self) -> float:
        try:
            return float(self.tags["threshold"])
        except (KeyError, ValueError) as err:
            raise DashboardError(f"{self.name} version {self.version} has no threshold tag") from err


def champion(category: str) -> VersionRecord | None:
    """The version `@champion` serves (its threshold is what the line applies), or None: no store here, no
    such version yet (`anomaly-spotter promote`), or a version without a threshold tag."""
    name = tracking.registered_model_name(category)
    try:
        tracking.use_existing_store(f"model {name}")
        version = tracking.model_version_by_alias(name, tracking.CHAMPION)
    except AnomalySpotterError:
        return None
    if version is None or "threshold" not in version.tags:
        return None
    return VersionRecord(name, str(version.version), (tracking.CHAMPION,), dict(version.tags))


def registered_versions(category: str) -> list[VersionRecord]:
    """Every registered version of the category's service model, newest first; DashboardError if none."""
    name = tracking.registered_model_name(category)
    tracking.use_existing_store(f"model {name}")
    versions = tracking.model_versions(name)
    if not versions:
        raise DashboardError(f"no registered model {name!r} in {tracking.tracking_uri()}; run `dvc repro`")
    held: dict[str, list[str]] = {}  # a version search does not fill in aliases: ask for each
    for alias in (tracking.CHAMPION, tracking.CHALLENGER):
        holder = tracking.model_version_by_alias(name, alias)
        if holder is not None:
            held.setdefault(str(holder.version), []).append(alias)
    return [
        VersionRecord(name, str(v.version), tuple(held.get(str(v.version), ())), dict(v.tags))
        for v in versions
    ]


def version_scores(record: VersionRecord) -> pd.DataFrame:
    """The scores.csv its `process_all` run logged (tag `run.process_all`): the version's scores of the
    validation and test images, as the pipeline computed them."""
    run_id = record.tags.get("run.process_all")
    if not run_id:
        raise DashboardError(f"{record.name} version {record.version} has no run.process_all tag")
    return run_scores(run_id)


def version_summary(record: VersionRecord, scores: pd.DataFrame) -> dict[str, Any]:
    """A version's tagged metrics and facts, and its test split judged at its own threshold."""
    test = scores[scores["split"] == "test"]
    m = evaluate_threshold(
        test["label"].to_numpy(), test["score"].to_numpy(dtype=np.float64), record.threshold
    )
    tagged = {k: _number(record.tags.get(k)) for k in VERSION_METRICS}
    return {
        "aliases": ", ".join(record.aliases) or "-",
        **tagged,
        **{k: record.tags.get(k, "-") for k in VERSION_FACTS},
        "precision at threshold": m["precision"],
        "recall at threshold": m["recall"],
        "F1 at threshold": m["f1"],
        "detected": k_of_n(m["detected"], m["n_defective"]),
        "false alarms": f"{m['false_positives']}/{m['n_good']}",
        "threshold proposal": record.tags.get(PROPOSAL_TAG, "-"),
    }


def _number(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def verdict_changes(a: pd.DataFrame, threshold_a: float, b: pd.DataFrame, threshold_b: float) -> pd.DataFrame:
    """The images both versions scored (same split and image path) whose verdicts differ, each at its own
    threshold: split, defect_type, label, image_path, score_a, verdict_a, score_b, verdict_b."""
    keys = ["split", "defect_type", "label", "image_path"]
    left = judged(a[[*keys, "score"]], threshold_a)
    right = judged(b[[*keys, "score"]], threshold_b)
    both = left.merge(right, on=keys, suffixes=("_a", "_b"))
    changed = both[both["verdict_a"] != both["verdict_b"]]
    columns = [*keys, "score_a", "verdict_a", "outcome_a", "score_b", "verdict_b", "outcome_b"]
    return changed[columns].sort_values(["split", "defect_type", "image_path"]).reset_index(drop=True)


def source_image(root: Path, image_path: str) -> np.ndarray | None:
    """The original image file of a scores.csv row (paths are relative to the repository), or None."""
    path = Path(image_path)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        return None
    try:
        return read_rgb(path)
    except AnomalySpotterError:
        return None


# --------------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------------


def require_streamlit() -> None:
    """DashboardError naming the extra to install when Streamlit is missing."""
    if importlib.util.find_spec("streamlit") is None:
        raise DashboardError(f"the dashboard needs Streamlit, which is not installed: {EXTRA_HINT}")


def streamlit_command(port: int, host: str) -> list[str]:
    """`streamlit run` of the app on host:port, headless, without usage statistics."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_FILE),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",  # no "Deploy" button or developer menu in a threshold-review tool
        "minimal",
    ]


def serve(root: Path, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> int:
    """Run the dashboard on host:port in `root` (the repository) until interrupted; the exit status."""
    require_streamlit()
    categories = pipeline_categories(root)  # fail here, with the command to run, not in the browser
    print(f"dashboard for {', '.join(categories)}: http://{host}:{port} (Ctrl-C stops it)", flush=True)
    proc = subprocess.Popen(streamlit_command(port, host), cwd=root)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())  # stop the server with us
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
