"""The review dashboard's Streamlit page (`anomaly-spotter dashboard` runs it with `streamlit run`).

Run in the repository folder: it shows the pipeline outputs found there (`anomaly_spotter.review.dashboard`
reads them; this file only lays them out). Two pages, chosen in the sidebar with the category:

- "Review a threshold": a threshold slider (starting at the deployed, calibrated threshold) over the
  score histogram, precision / recall / F1 / false-alarm rates and defects detected per type at it, the
  ROC and PR curves with the operating point, a button proposing the threshold, and the gallery;
- "Compare two versions": two registered versions' metrics and the images whose verdict differs.

The numbers of the operating point are also kept in `st.session_state["operating_point"]` (tests read
them there).
"""

from __future__ import annotations

import math
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.review import dashboard as db

REVIEW_PAGE = "Review a threshold"
COMPARE_PAGE = "Compare two versions"
TILE_COLUMNS = 3
HIST_BINS = 40
CHART_HEIGHT = 260
GOOD_COLOUR = "#1f77b4"  # plots.GOOD_COLOR / DEFECT_COLOR (matplotlib's tab:blue, tab:red)
DEFECT_COLOUR = "#d62728"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _cell(value: object) -> str:
    return _fmt(value, 4) if isinstance(value, float) else str(value)


def _delta(value: float, reference: float) -> str | None:
    if not (math.isfinite(value) and math.isfinite(reference)) or round(value - reference, 3) == 0:
        return None
    return f"{value - reference:+.3f} vs deployed"


def histogram(
    review: db.CategoryReview, point: db.OperatingPoint, served: db.VersionRecord | None = None
) -> alt.LayerChart:
    """Good vs defective test scores (shared bins), the chosen and the calibrated thresholds marked, and
    the threshold `@champion` serves (`served`) where it differs from this workspace's."""
    lo, hi = db.threshold_range(review)
    # scores past the slider's end are counted in its last bin rather than dropped
    test = review.test.assign(
        kind=review.test["label"].map({0: "good", 1: "defective"}), score=review.test["score"].clip(lo, hi)
    )
    bars = (
        alt.Chart(test[["score", "kind"]])
        .mark_bar(opacity=0.6, binSpacing=0)
        .encode(
            x=alt.X(
                "score:Q",
                bin=alt.Bin(extent=[lo, hi], maxbins=HIST_BINS),
                title="anomaly score (scores past either end counted in the end bins)",
            ),
            y=alt.Y("count():Q", stack=None, title="test images"),
            color=alt.Color(
                "kind:N",
                scale=alt.Scale(domain=["good", "defective"], range=[GOOD_COLOUR, DEFECT_COLOUR]),
                title=None,
            ),
        )
    )
    marks = [("chosen", point.threshold, "black", [])]
    if review.recall_threshold is not None:
        marks.append(
            (f"recall ≥ {review.recall_target:g} (calibrated)", review.recall_threshold, "green", [6, 3])
        )
    if review.deployed.method == "good_only" and review.good_only_threshold is not None:
        marks.append(("good-only (deployed)", review.good_only_threshold, "gray", [2, 2]))
    if served is not None and not math.isclose(served.threshold, review.deployed.threshold):
        marks.append((f"@champion (version {served.version})", served.threshold, "purple", [1, 3]))
    # labels one above the other: the marks are often close together
    rules = pd.DataFrame(
        [{"mark": m, "threshold": t, "row": 12 + 14 * i} for i, (m, t, _, _) in enumerate(marks)]
    )
    lines = [
        alt.Chart(rules[rules["mark"] == m])
        .mark_rule(color=colour, strokeDash=dash, size=2)
        .encode(x="threshold:Q", tooltip=["mark:N", alt.Tooltip("threshold:Q", format=".4f")])
        for m, _, colour, dash in marks
    ]
    labels = (
        alt.Chart(rules)
        .mark_text(align="left", dx=4, dy=-4, baseline="bottom", fontSize=11)
        .encode(x="threshold:Q", y=alt.Y("row:Q", scale=None), text="mark:N")
    )
    return alt.layer(bars, *lines, labels).properties(height=CHART_HEIGHT)


def curve_chart(points: pd.DataFrame, x: str, y: str, at: tuple[float, float], title: str) -> alt.LayerChart:
    """A ROC or PR curve with the operating point `at` = (x, y) marked."""
    line = (
        alt.Chart(points)
        .mark_line(interpolate="step-before" if x == "recall" else "linear")
        .encode(
            x=alt.X(f"{x}:Q", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y(f"{y}:Q", scale=alt.Scale(domain=[0, 1])),
            tooltip=[x, y, alt.Tooltip("threshold:Q", format=".4f")],
        )
    )
    dot = (
        alt.Chart(pd.DataFrame({x: [at[0]], y: [at[1]]}))
        .mark_point(size=120, filled=True, color="black")
        .encode(x=f"{x}:Q", y=f"{y}:Q")
    )
    return alt.layer(line, dot).properties(title=title, height=CHART_HEIGHT)


def review_page(root: Path, category: str) -> None:
    review = db.load_review(root, category)
    deployed = review.deployed
    lo, hi = db.threshold_range(review)
    served = db.champion(category)
    st.subheader(f"{category}: where should the threshold sit?")
    line = (
        f"@champion (version {served.version}) serves threshold {served.threshold:.4f}"
        if served is not None
        else "No version holds @champion yet (`anomaly-spotter promote`)"
    )
    st.caption(
        f"{line}. This workspace's pipeline calibrated {deployed.threshold:.4f} ({deployed.method}), which "
        "`register` packages into its next version. An image is defective iff its score is above the "
        "threshold. Figures below are on the test split at the chosen threshold, in-sample "
        "(metrics/thresholds.json reports the recall-target threshold out-of-fold)."
    )
    threshold = st.slider(
        "threshold",
        min_value=lo,
        max_value=hi,
        value=deployed.threshold,
        step=(hi - lo) / 1000,
        format="%.4f",
        key=f"threshold_{category}",
    )
    point = db.operating_point(review, threshold)
    reference = db.operating_point(review, deployed.threshold)
    st.session_state["operating_point"] = point
    cols = iter(st.columns(5))
    for label, value, ref in (
        ("precision", point.precision, reference.precision),
        ("recall", point.recall, reference.recall),
        ("F1", point.f1, reference.f1),
    ):
        next(cols).metric(label, _fmt(value), _delta(value, ref))
    for label, value, counts in (
        ("false-alarm rate (test good)", point.false_alarm_rate, f"{point.false_positives}/{point.n_good}"),
        (
            "false-alarm rate (validation)",
            point.val_false_alarm_rate,
            f"{point.val_false_alarms}/{point.n_val}",
        ),
    ):
        next(cols).metric(
            label, _fmt(value), f"{counts} good parts flagged", delta_color="off", delta_arrow="off"
        )
    if point.n_defective:
        met = "meets" if point.recall >= review.recall_target else "misses"
        st.write(
            f"Defects detected **{point.detected}/{point.n_defective}**: recall {_fmt(point.recall)} {met} "
            f"the recall target {review.recall_target:g}."
        )
    else:
        st.write("No defective test image: only the false-alarm rates mean anything here.")
    st.dataframe(point.per_defect, hide_index=True, width="stretch")
    st.altair_chart(histogram(review, point, served), width="stretch")
    roc, pr = db.curves(review)
    left, right = st.columns(2)
    if not roc.empty:
        left.altair_chart(
            curve_chart(roc, "fpr", "tpr", (point.false_alarm_rate, point.recall), "ROC (test)"),
            width="stretch",
        )
    if not pr.empty:
        right.altair_chart(
            curve_chart(
                pr, "recall", "precision", (point.recall, point.precision), "precision-recall (test)"
            ),
            width="stretch",
        )
    proposal_box(root, review, threshold)
    gallery_section(review, threshold)


def proposal_box(root: Path, review: db.CategoryReview, threshold: float) -> None:
    st.markdown("#### Propose this threshold")
    earlier = db.read_proposal(root, review.category)
    if earlier:
        st.caption(
            f"Current proposal: {earlier['threshold']:.4f} by {earlier['proposed_by']} at "
            f"{earlier['proposed_at']} ({db.proposal_file(root, review.category).relative_to(root)})"
        )
    note = st.text_input("note (why)", key=f"note_{review.category}")
    if st.button(f"Propose {threshold:.4f} for {review.category}", key=f"propose_{review.category}"):
        proposal = db.make_proposal(review, threshold, note=note)
        path = db.write_proposal(root, proposal)
        st.success(
            f"Wrote {path.relative_to(root)}. The deployed threshold stays {review.deployed.threshold:.4f}."
        )
        try:
            st.success(f"Tagged {db.tag_proposal(proposal)} with {db.PROPOSAL_TAG}.")
        except AnomalySpotterError as err:
            st.warning(f"Not tagged in MLflow: {err}")


def gallery_section(review: db.CategoryReview, threshold: float) -> None:
    st.markdown("#### Gallery")
    c = review.category
    f1, f2, f3 = st.columns(3)
    splits = f1.multiselect("split", ["test", "val"], default=["test", "val"], key=f"splits_{c}")
    types = sorted(set(review.table["defect_type"].astype(str)))
    chosen_types = f2.multiselect("defect type", types, default=types, key=f"types_{c}")
    outcomes = f3.multiselect("outcome", list(db.OUTCOMES), default=list(db.OUTCOMES), key=f"outcomes_{c}")
    shown = db.gallery(review, threshold, splits, chosen_types, outcomes)
    pages = max(1, math.ceil(len(shown) / db.TILES_PER_PAGE))
    page = st.number_input(f"page (of {pages})", 1, pages, 1, key=f"page_{c}_{pages}") if pages > 1 else 1
    st.caption(f"{len(shown)} images, highest score first")
    chunk = shown.iloc[(page - 1) * db.TILES_PER_PAGE : page * db.TILES_PER_PAGE]
    cols = st.columns(TILE_COLUMNS)
    for i, row in enumerate(chunk.itertuples()):
        cols[i % TILE_COLUMNS].image(
            db.tile(review, row, threshold), caption=db.caption(row), width="stretch"
        )


def compare_page(root: Path, category: str) -> None:
    st.subheader(f"{category}: compare two registered versions")
    versions = db.registered_versions(category)
    if len(versions) < 2:
        st.info(f"{versions[0].name} has one version only; register another (`dvc repro`) to compare.")
        return
    labels = [v.label for v in versions]
    # A: the champion (else the second newest), B: the newest
    champion = next((i for i, v in enumerate(versions) if "champion" in v.aliases and i > 0), 1)
    left, right = st.columns(2)
    a = left.selectbox("version A", labels, index=champion, key=f"version_a_{category}")
    b = right.selectbox("version B", labels, index=0, key=f"version_b_{category}")
    first, second = versions[labels.index(a)], versions[labels.index(b)]
    scores_a, scores_b = db.version_scores(first), db.version_scores(second)
    table = pd.DataFrame(
        {first.label: db.version_summary(first, scores_a), second.label: db.version_summary(second, scores_b)}
    )
    st.dataframe(table.map(_cell), width="stretch")
    changed = db.verdict_changes(scores_a, first.threshold, scores_b, second.threshold)
    st.markdown(f"#### {len(changed)} images judged differently")
    st.caption(
        "Each version's scores as its process_all run logged them (scores.csv), each at its own threshold."
    )
    st.dataframe(changed, hide_index=True, width="stretch")
    cols = st.columns(TILE_COLUMNS)
    for i, row in enumerate(changed.head(db.TILES_PER_PAGE).itertuples()):
        image = db.source_image(root, row.image_path)
        text = (
            f"{row.defect_type}/{Path(row.image_path).name}: A {row.verdict_a} ({row.score_a:.3f}), "
            f"B {row.verdict_b} ({row.score_b:.3f})"
        )
        if image is None:
            cols[i % TILE_COLUMNS].write(f"{text} (image file not found)")
        else:
            cols[i % TILE_COLUMNS].image(image, caption=text, width="stretch")


def main() -> None:
    st.set_page_config(page_title="Anomaly Spotter: threshold review", layout="wide")
    st.title("Anomaly Spotter: threshold review")
    root = Path.cwd()
    try:
        categories = db.pipeline_categories(root)
    except AnomalySpotterError as err:
        st.error(str(err))
        st.stop()
    page = st.sidebar.radio("page", [REVIEW_PAGE, COMPARE_PAGE], key="page")
    category = st.sidebar.selectbox("category", categories, key="category")
    try:
        if page == REVIEW_PAGE:
            review_page(root, category)
        else:
            compare_page(root, category)
    except AnomalySpotterError as err:
        st.error(str(err))


main()
