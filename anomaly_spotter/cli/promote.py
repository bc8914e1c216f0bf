"""`anomaly-spotter promote`: move the champion alias when the newest version is as good."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomaly_spotter.core.errors import AnomalySpotterError

PROMOTE_EPILOG = """examples:
  anomaly-spotter promote --category fabric
  anomaly-spotter promote --category fabric --force --reason "approved by QA, ticket 123"

The newest version becomes champion when it is at least as good on registry.promote_metric (ties:
registry.tiebreak_metric) and, where the category has a field set (reviewed line images held out of
training, feedback/<category>/), it catches every confirmed defect the champion catches and flags no
more held-out reviewed goods than the champion; otherwise it becomes challenger.

see docs/serving.md
"""


def _params(params_path: Path) -> Any:
    from anomaly_spotter.core.config import Params, load_params

    return load_params(params_path) if params_path.is_file() else Params()


def _fmt(value: str | None) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):.4f}"
    except ValueError:
        return value


def metrics_table(
    new: tuple[str, dict[str, str]], champion: tuple[str, dict[str, str]] | None, metrics: Sequence[str]
) -> str:
    """A small text table: one row per metric, one column per version."""
    headers = ["metric", f"new v{new[0]}"] + ([f"champion v{champion[0]}"] if champion else [])
    rows = [[m, _fmt(new[1].get(m))] + ([_fmt(champion[1].get(m))] if champion else []) for m in metrics]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def field_gate(params: Any, category: str, name: str, new: str, champion: str) -> Any | None:
    """Both versions scored on the category's field set (feedback.gate.FieldComparison), or None when it
    has none (no reviewed images held out of training yet)."""
    from anomaly_spotter.feedback.gate import compare_on_field, field_set
    from anomaly_spotter.serving.model import load_service_model

    rows = field_set(
        Path(params.feedback.root), category, params.data.val_fraction, params.feedback.holdout_fraction
    )
    if rows.empty:
        return None
    print(f"scoring the field set ({len(rows)} reviewed images held out of training) with both versions")
    return compare_on_field(
        load_service_model(f"models:/{name}/{new}"), load_service_model(f"models:/{name}/{champion}"), rows
    )


def cmd_promote(args: argparse.Namespace) -> int:
    from anomaly_spotter import tracking
    from anomaly_spotter.tracking import promotion

    if args.force and not args.reason:
        raise AnomalySpotterError('--force needs --reason "..." (it is recorded on the model version)')
    params = _params(args.params)
    reg = params.registry
    metric, tiebreak = args.metric or reg.promote_metric, args.tiebreak or reg.tiebreak_metric
    name = tracking.registered_model_name(args.category)
    tracking.use_existing_store(f"model {name}")
    newest = tracking.latest_model_version(name)
    new_tags = dict(newest.tags)
    champ = tracking.model_version_by_alias(name, tracking.CHAMPION)
    champ_tags = dict(champ.tags) if champ is not None else None
    shown = list(
        dict.fromkeys(
            [metric, tiebreak, "image_auroc", "pixel_auroc", "aupro", "f1", "precision", "recall"]
            + ["false_alarm_rate", "val_false_alarm_rate", "threshold"]
        )
    )
    print(
        f"{name}: newest version {newest.version}; champion: "
        f"{'none' if champ is None else 'version ' + str(champ.version)}"
    )
    print(metrics_table((newest.version, new_tags), (champ.version, champ_tags) if champ else None, shown))
    if champ is not None and str(champ.version) == str(newest.version) and not args.force:
        print(f"version {newest.version} already holds champion; nothing to do")
        return 0
    decision = promotion.decide_promotion(
        new_tags, champ_tags if champ is not None else None, metric, tiebreak
    )
    if champ is not None:  # and on the field set: what reviewers already decided about the line's images
        field = field_gate(params, args.category, name, str(newest.version), str(champ.version))
        if field is not None:
            print(field.table())
            decision = promotion.with_field_gate(decision, field.passes, field.reason())
    who = args.by or tracking.current_user()
    if decision.promote or args.force:
        reason = (
            f"forced: {args.reason} (metrics: {decision.reason})"
            if args.force
            else (args.reason or decision.reason)
        )
        previous = None if champ is None else str(champ.version)
        promotion.record_promotion(name, newest.version, previous, reason, who, args.force)
        print(f"promoted version {newest.version} to champion: {reason}")
        print(f"load or serve it as models:/{name}@{tracking.CHAMPION}")
    else:
        promotion.record_challenger(name, newest.version, decision.reason, who)
        print(
            f"version {newest.version} is now challenger, champion stays version {champ.version}: "
            f'{decision.reason}. Use --force --reason "..." to promote anyway.'
        )
    return 0
