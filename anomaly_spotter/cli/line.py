"""`anomaly-spotter simulate-line` (a batch of built-in parts from a changed line) and
`anomaly-spotter feedback` (record reviewers' decisions from the command line) (docs/line.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from anomaly_spotter.core.errors import AnomalySpotterError

SIMULATE_EPILOG = """examples:
  anomaly-spotter simulate-line --category component --change lighting --good 40 --out line/day1
  anomaly-spotter simulate-line --category component --change lighting --good 40 --defective 8 \\
      --batch day2 --out line/day2

Writes PNGs and manifest.csv (file, truth, defect_type: the simulation's answer key) into --out.
Changes: none (the line as trained), lighting (a new lamp: warm cast, darker, fall-off from one side),
print (label only: a new print variant). See docs/line.md.
"""

FEEDBACK_EPILOG = """examples:
  anomaly-spotter feedback --log logs/component --decision false_alarm line/day1/day1_0003.png
  anomaly-spotter feedback --log logs/component --decision confirmed_defect --defect-type bent_lead \\
      --note "lead 2, left" line/day1/day1_0007.png
  anomaly-spotter feedback --log logs/component --decision false_alarm --list reviewed.txt

Each image must be in the scoring log (the decision records the version, score and threshold it got);
it is copied into feedback/<category>/ and the decision appended to decisions.csv, which DVC tracks.
Then `dvc repro` retrains that category. The dashboard's page "Review the line" does the same with the
overlays in view. See docs/line.md.
"""


def cmd_simulate_line(args: argparse.Namespace) -> int:
    from anomaly_spotter.core.config import Params, load_params
    from anomaly_spotter.data.builtin.line import generate_line

    params = load_params(args.params) if args.params.is_file() else Params()
    manifest = generate_line(
        args.out,
        args.category,
        args.change,
        args.good,
        args.defective,
        params.seed if args.seed is None else args.seed,
        args.batch or args.out.name,
        args.image_size or params.builtin.image_size,
    )
    counts = manifest["truth"].value_counts()
    print(
        f"wrote {len(manifest)} {args.category} images ({counts.get('good', 0)} good, "
        f"{counts.get('defective', 0)} defective; change: {args.change}) to {args.out}/ with manifest.csv"
    )
    return 0


def read_list(path: Path) -> list[Path]:
    """Image paths from a file: one per line, or a CSV with a `path` (or `image`) column."""
    import pandas as pd

    try:
        text = path.read_text()
    except OSError as err:
        raise AnomalySpotterError(f"{path}: cannot read the list ({err.strerror or err})") from err
    first = text.splitlines()[0] if text.strip() else ""
    if "," in first:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        column = next((c for c in ("path", "image") if c in frame.columns), None)
        if column is None:
            raise AnomalySpotterError(f"{path}: a CSV list needs a 'path' or 'image' column")
        return [Path(p) for p in frame[column] if p]
    return [Path(line.strip()) for line in text.splitlines() if line.strip()]


def log_rows_by_image(log: Any) -> dict[str, dict[str, Any]]:
    """The latest scoring-log row per image file (absolute path) and per sha256."""
    rows: dict[str, dict[str, Any]] = {}
    for row in log.to_dict("records"):
        rows[str(row["image"])] = row
        rows[str(row["image_sha256"])] = row
    return rows


def cmd_feedback(args: argparse.Namespace) -> int:
    from anomaly_spotter import tracking
    from anomaly_spotter.core.config import Params, load_params
    from anomaly_spotter.feedback import allowed_decisions, record_decision, track_with_dvc
    from anomaly_spotter.serving.scoring_log import image_file, read_log, sha256_hex

    params = load_params(args.params) if args.params.is_file() else Params()
    images = list(args.images) + (read_list(args.list) if args.list else [])
    if not images:
        raise AnomalySpotterError("name the images decided on (IMAGE ... or --list FILE)")
    rows = log_rows_by_image(read_log(args.log))
    reviewer = args.by or tracking.current_user()
    root = Path(params.feedback.root)
    decided = []  # every image resolved and checked before anything is recorded
    for image in images:
        row = rows.get(str(image.resolve()))
        if row is None and image.is_file():
            row = rows.get(sha256_hex(image.read_bytes()))
        if row is None:
            raise AnomalySpotterError(
                f"{image}: not in the scoring log {args.log}; decide on images the line scored "
                f"(anomaly-spotter predict ... --log {args.log}); nothing recorded"
            )
        if args.decision not in allowed_decisions(str(row["verdict"])):
            allowed = " or ".join(allowed_decisions(str(row["verdict"])))
            raise AnomalySpotterError(
                f"{image}: the line judged it {row['verdict']}, so it can be decided {allowed}, not "
                f"{args.decision}; nothing recorded"
            )
        source = image_file(args.log, str(row["image"]))
        decided.append((source if source.is_file() else image, row))
    categories: set[str] = set()
    for image, row in decided:
        record_decision(
            root,
            str(row["category"]),
            image,
            args.decision,
            reviewer,
            args.defect_type or "",
            args.note or "",
            {**row, "scoring_log": str(args.log)},
        )
        categories.add(str(row["category"]))
    for category in sorted(categories):
        tracked = track_with_dvc(root, category, Path.cwd())
        if tracked:
            print(f"DVC now tracks {root / category} ({tracked})")
    print(
        f"recorded {len(images)} decision(s) '{args.decision}' by {reviewer} in "
        + ", ".join(str(root / c / "decisions.csv") for c in sorted(categories))
        + "; next: `dvc repro` retrains on them",
        file=sys.stdout,
    )
    return 0
