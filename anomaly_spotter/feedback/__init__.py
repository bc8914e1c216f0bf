"""What reviewers decide about scored images on the line, kept as versioned data the pipeline reads.

    feedback/                       git: README.md; DVC: one `<category>.dvc` per category folder
      <category>/
        decisions.csv               append-only: one row per decision (who, when, what, on which image)
        images/<sha256>.<ext>       each reviewed image, copied in (the data version is self-contained)

A decision is `false_alarm` (a flagged image that is good), `confirmed_defect` (a flagged image that is
defective, with its defect type) or `missed_defect` (a passed image that is defective). Decisions are
appended, never rewritten: a later decision on the same image (same sha256) supersedes the earlier one,
and both stay in the file.

The `prepare` stage turns the current decisions into rows of the category's index (`feedback_rows`):

- reviewed goods (false alarms) join the good images: a fixed share of them (`feedback.holdout_fraction`)
  is held out of training as the field set's goods, of the rest `data.val_fraction` go to validation and
  the others to training. Which share an image falls in depends on its content hash only, so it never
  changes as more images are reviewed, and every model version holds out the same reviewed goods;
- confirmed and missed defects form the field set's defects, never trained on.

The field set (split `field`) is scored by `process_all` and reported on its own by `extract_metrics`
and `compute_thresholds`; `promote` compares champion and challenger on it (`feedback.gate`).
"""

from anomaly_spotter.feedback.store import (  # noqa: F401
    CONFIRMED_DEFECT,
    DECISION_COLUMNS,
    DECISIONS,
    DECISIONS_FILE,
    FALSE_ALARM,
    FEEDBACK_ROOT,
    FIELD_SPLIT,
    MISSED_DEFECT,
    allowed_decisions,
    current_decisions,
    feedback_dir,
    feedback_rows,
    read_decisions,
    record_decision,
    track_with_dvc,
)
