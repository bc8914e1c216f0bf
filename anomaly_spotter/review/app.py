"""The review dashboard's Streamlit page (`anomaly-spotter dashboard` runs it with `streamlit run`).

Run in the repository folder: it shows the pipeline outputs found there (`anomaly_spotter.review.dashboard`
reads them; this file only lays them out). Three pages, chosen in the sidebar with the category:

- "Review a threshold": a threshold slider (starting at the deployed, calibrated threshold) over the
  score histogram, precision / recall / F1 / false-alarm rates and defects detected per type at it, the
  ROC and PR curves with the operating point, a button proposing the threshold, and the gallery;
- "Compare two versions": two registered versions' metrics and the images whose verdict differs;
- "Review the line": the images of a scoring log (`predict|score-spark|serve --log`), flagged ones to
  decide and a sample of passed ones, each decision recorded as feedback (`anomaly_spotter.review.line`
  chooses the rows and records; it needs no pipeline outputs). `?page=line&log=LOG` opens it on a log.
  Its "Drift over time" section plots `anomaly-spotter monitor`'s report on the log per day or batch
  (`anomaly_spotter.review.drift`).

The numbers of the operating point are also kept in `st.session_state["operating_point"]` (tests read
them there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from anomaly_spotter import tracking
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.monitoring.drift import PERIODS, Limits, summary
from anomaly_spotter.review import dashboard as db
from anomaly_spotter.review import drift, line
from anomaly_spotter.serving import scoring_log
from anomaly_spotter.tracking.scores import registered_pairs

REVIEW_PAGE = "Review a threshold"
COMPARE_PAGE = "Compare two versions"
LINE_PAGE = "Review the line"
PAGES = (REVIEW_PAGE, COMPARE_PAGE, LINE_PAGE)
LINE_QUERY = "line"  # ?page=line opens the line review
RECORDED_KEY = "line_recorded"  # the last decision recorded, shown after the rerun that moves its image
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
    start = PAGES.index(LINE_PAGE) if st.query_params.get("page") == LINE_QUERY else 0
    page = st.sidebar.radio("page", PAGES, index=start, key="page")
    root = Path.cwd()
    if page == LINE_PAGE:  # a scoring log and the feedback folder; no pipeline outputs needed
        st.title("Anomaly Spotter: line review")
        try:
            line_page(root)
        except AnomalySpotterError as err:
            st.error(str(err))
        return
    st.title("Anomaly Spotter: threshold review")
    try:
        categories = db.pipeline_categories(root)
    except AnomalySpotterError as err:
        st.error(str(err))
        st.stop()
    category = st.sidebar.selectbox("category", categories, key="category")
    try:
        if page == REVIEW_PAGE:
            review_page(root, category)
        else:
            compare_page(root, category)
    except AnomalySpotterError as err:
        st.error(str(err))


# --------------------------------------------------------------------------------------------------
# the line review
# --------------------------------------------------------------------------------------------------


@st.cache_resource(max_entries=4, show_spinner="loading the model version")
def _service_model(uri: str):  # noqa: ANN202 - a ServiceModel or an exported edge model
    return line.load_model(uri)


@st.cache_data(max_entries=1000, show_spinner=False)
def _overlay(uri: str, log_dir: str, image: str, sha256: str) -> np.ndarray:
    """The overlay of one scored image by the model version that scored it (cached on both)."""
    row = {"image": image, "image_sha256": sha256}
    picture = line.scored_image(Path(log_dir), row)
    return line.overlay(_service_model(uri), picture, Path(image).name)


@st.cache_data(max_entries=8, show_spinner="reading the scoring log")
def _read_log(log_dir: str, parts: tuple[str, ...]) -> pd.DataFrame:
    """The log (re-read when a part file is added: `parts` is in the cache key)."""
    return scoring_log.read_log(Path(log_dir))


def line_page(root: Path) -> None:
    params = line.line_params(root)
    feedback = line.feedback_root(root, params)
    reviewer = st.sidebar.text_input(
        "reviewer (recorded with each decision)", value=tracking.current_user(), key="reviewer"
    ).strip()
    if not reviewer:
        st.sidebar.warning("Enter your name: every decision records who made it.")
    st.subheader("Review the line: what the model decided on scored images")
    default = line.default_log(root, st.query_params.get("log"), params.data.categories)
    log_text = st.text_input(
        "scoring log folder",
        value=default,
        key="line_log",
        help="a folder `anomaly-spotter predict ... --log LOG` (or score-spark, serve) appends to",
    ).strip()
    if not log_text:
        st.info(
            "Enter a scoring log folder. Write one with `anomaly-spotter predict IMAGES --model "
            "models:/anomaly-spotter-<category>@champion --log logs/<category>` (or `serve --log`)."
        )
        return
    log_dir = Path(log_text)
    log = _read_log(log_text, tuple(p.name for p in scoring_log.part_files(log_dir)))
    st.caption(f"{log_dir}: {len(log)} rows. Feedback goes to {feedback} (params.yaml `feedback.root`).")
    table = line.summary(log, feedback)
    st.dataframe(table, hide_index=True, width="stretch")
    drift_section(log)
    categories = table["category"].tolist()
    category = st.selectbox("category", categories, key="line_category")
    recorded = st.session_state.pop(RECORDED_KEY, None)
    if recorded is not None:
        _show_recorded(recorded)
    rows = line.with_decisions(
        line.latest_rows(log[log["category"] == category]), line.category_decisions(feedback, category)
    )
    context = _LineContext(
        root, feedback, log_dir, reviewer, line.known_defect_types(root, params, feedback, category), {}
    )

    todo = line.flagged_to_decide(rows)
    st.markdown(f"#### Flagged, to decide: {len(todo)}")
    st.caption(
        "Highest score first. A false alarm joins the training goods; a confirmed defect the field set."
    )
    _tiles(context, _paged(todo, f"line_todo_{category}"))

    passed = int((rows["verdict"] != line.FLAGGED).sum())
    st.markdown(f"#### Passed: a sample to check ({passed} passed)")
    left, right = st.columns(2)
    size = left.number_input(
        "sample size", 0, line.MAX_SAMPLE, line.SAMPLE_SIZE, key=f"line_sample_{category}"
    )
    seed = right.number_input("sample seed", 0, 2**31 - 1, 0, key=f"line_seed_{category}")
    sample = line.passed_sample(rows, int(size), int(seed))
    st.caption(f"{len(sample)} passed images not yet decided, chosen by the seed; mark one a missed defect.")
    _tiles(context, sample)

    done = line.decided_rows(rows)
    st.markdown(f"#### Decided: {len(done)}")
    st.caption("The decision in force for each image (the latest); a new one is appended, the old one kept.")
    _tiles(context, _paged(done, f"line_done_{category}"))


@st.cache_data(max_entries=16, show_spinner="reading the model versions' validation scores")
def _references(uri: str, pairs: tuple[tuple[str, str], ...]) -> dict:
    """The validation references of these versions in the store `uri` (cached on both)."""
    return drift.line_references(list(pairs))


def drift_section(log: pd.DataFrame) -> None:
    """Drift over time: the flagged share and PSI of the log per period and model version against each
    version's validation (`anomaly-spotter monitor`'s report), with its limits as controls."""
    st.markdown("#### Drift over time")
    st.caption(
        "Per period and registered model version, as `anomaly-spotter monitor` reports it: the share flagged "
        "against the share of its held-out goods (validation and test) above the threshold, and how far the "
        "good-looking images' scores moved from those goods' (PSI). docs/line.md explains the limits."
    )
    default = Limits()
    cols = st.columns(4)
    period = cols[0].selectbox("period", PERIODS, key="line_drift_period")
    excess = cols[1].number_input(
        "max flag excess", 0.0, 1.0, default.max_flag_excess, 0.01, key="line_drift_excess"
    )
    max_psi = cols[2].number_input("max PSI", 0.001, None, default.max_psi, 0.05, key="line_drift_psi")
    min_images = cols[3].number_input("min images", 1, None, default.min_images, key="line_drift_min")
    pairs = tuple(registered_pairs(log))
    if not pairs:
        st.info(
            "No rows of this log were scored by a registered model version, so there is no validation to "
            "compare with; score with --model models:/anomaly-spotter-<category>/..."
        )
        return
    try:
        limits = Limits(float(excess), float(max_psi), int(min_images))
        report = drift.line_report(log, _references(tracking.tracking_uri(), pairs), period, limits)
    except AnomalySpotterError as err:
        st.error(str(err))
        return
    left, right = st.columns(2)
    left.altair_chart(drift.share_chart(report, limits), width="stretch")
    right.altair_chart(drift.psi_chart(report, limits), width="stretch")
    st.dataframe(
        drift.report_table(report),
        hide_index=True,
        width="stretch",
        column_config={
            c: st.column_config.NumberColumn(format="percent") for c in ("share", "expected", "excess")
        }
        | {c: st.column_config.NumberColumn(format="%.3f") for c in ("PSI", "PSI by chance", "KS", "KS p")},
    )
    st.caption(summary(report, limits))


@dataclass
class _LineContext:
    root: Path
    feedback: Path
    log_dir: Path
    reviewer: str
    defect_types: list[str]
    models: dict[str, str]  # model URIs tried in this run: "" loaded, else why not


def _paged(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """One page of `rows` (db.TILES_PER_PAGE a page, as the gallery), with a page number when needed."""
    pages = line.page_count(len(rows), db.TILES_PER_PAGE)
    page = st.number_input(f"page (of {pages})", 1, pages, 1, key=f"{key}_{pages}") if pages > 1 else 1
    return line.page_rows(rows, int(page), db.TILES_PER_PAGE)


def _model_problem(context: _LineContext, uri: str) -> str:
    """Why the model version `uri` cannot draw overlays ("" when it loads); tried once per run."""
    if uri not in context.models:
        try:
            _service_model(uri)
            context.models[uri] = ""
        except AnomalySpotterError as err:
            context.models[uri] = str(err)
    return context.models[uri]


def _tiles(context: _LineContext, rows: pd.DataFrame) -> None:
    cols = st.columns(TILE_COLUMNS)
    for i, row in enumerate(rows.to_dict("records")):
        with cols[i % TILE_COLUMNS]:
            _tile(context, row)


def _tile(context: _LineContext, row: dict) -> None:
    """One scored image: its overlay (or why not), what the log says, and the decision form."""
    uri, sha = line.model_uri(row), str(row["image_sha256"])
    try:
        problem = _model_problem(context, uri)
        if problem:
            raise line.LineReviewError(problem)
        picture = _overlay(uri, str(context.log_dir), str(row["image"]), sha)
    except AnomalySpotterError as err:
        st.error(str(err))
    else:
        st.image(picture, width="stretch")
    st.caption(line.caption(row))
    options = line.choices(row)
    with st.form(key=f"line_form_{sha}", enter_to_submit=False):  # Enter in the note records nothing
        kind = None
        if any(d != line.FALSE_ALARM for d in options):
            current = row.get("decided_type") or None
            types = context.defect_types
            kind = st.selectbox(
                "defect type" + (" (required)" if line.CONFIRMED_DEFECT in options else " (optional)"),
                types,
                index=types.index(current) if current in types else None,
                placeholder="choose or type a new one",
                accept_new_options=True,
                key=f"line_type_{sha}",
            )
        note = st.text_input("note (optional)", key=f"line_note_{sha}")
        buttons = st.columns(len(options))
        clicked = [
            d
            for d, col in zip(options, buttons, strict=True)
            if col.form_submit_button(line.DECISION_LABELS[d], key=f"line_{d}_{sha}", width="stretch")
        ]
    if clicked:
        try:
            recorded = line.record(
                context.root,
                context.feedback,
                context.log_dir,
                row,
                clicked[0],
                context.reviewer,
                kind or "",
                note,
            )
        except AnomalySpotterError as err:
            st.error(str(err))
        else:
            st.session_state[RECORDED_KEY] = recorded
            st.rerun()


def _show_recorded(recorded: line.Recorded) -> None:
    """What the last decision wrote, and what to run next."""
    r = recorded.row
    kind = f" ({r['defect_type']})" if r["defect_type"] else ""
    st.success(
        f"Recorded **{line.DECISION_LABELS[r['decision']]}{kind}** by {r['reviewer']} at {r['decided_at']} "
        f"for {line.short_name(r['source_image'])} (sha256 {r['image_sha256'][:12]}..., {r['model_name']} "
        f"v{r['model_version']}): a row of {recorded.folder / 'decisions.csv'}, the image copied to "
        f"{recorded.folder / r['image_file']}."
    )
    if recorded.dvc_error:
        st.warning(f"The decision is kept, but DVC does not version it yet: {recorded.dvc_error}")
    st.info(recorded.next_step)


main()
