"""The benchmark's pure parts: variant specs and the leave-one-category-out selection."""

from __future__ import annotations

import pytest

from anomaly_spotter.bench import loco_table, parse_variant


def test_variant_specs_parse_nested_lists() -> None:
    name, options = parse_variant("patchcore:members=[[3],[2,3]],input_size=256,label=two members")
    assert name == "patchcore"
    assert options == {"members": [[3], [2, 3]], "input_size": 256, "label": "two members"}
    assert parse_variant("unet_ae") == ("unet_ae", {})
    assert parse_variant("patchcore:label=previous default: single [3]")[1] == {
        "label": "previous default: single [3]"
    }
    with pytest.raises(SystemExit, match="key=value"):
        parse_variant("patchcore:members")


def _rows(grid: dict[str, dict[str, float]]) -> list[dict[str, float | str]]:
    return [
        {"variant": v, "category": c, "image_auroc": score}
        for v, by_cat in grid.items()
        for c, score in by_cat.items()
    ]


def test_loco_never_looks_at_the_held_out_category() -> None:
    # "tuned" is best on a only because it was fitted to a; "robust" is best on everything else
    grid = {
        "tuned": {"a": 1.00, "b": 0.80, "c": 0.80},
        "robust": {"a": 0.95, "b": 0.95, "c": 0.94},
    }
    table, rows = loco_table(_rows(grid))
    by_held = {r["held_out"]: r for r in rows}
    assert by_held["a"]["chosen"] == "robust" and by_held["a"]["image_auroc"] == 0.95
    assert by_held["a"]["oracle"] == "tuned" and by_held["a"]["oracle_image_auroc"] == 1.00
    assert by_held["b"]["chosen"] == "robust" and by_held["c"]["chosen"] == "robust"
    assert by_held["b"]["others_mean"] == pytest.approx((0.95 + 0.94) / 2)
    assert "| **mean** | | **0.9467** |" in table


def test_loco_breaks_ties_by_the_worst_case_and_needs_a_full_grid() -> None:
    # over b and c, "spiky" and "even" have the same mean (0.75); "even" has the better worst case
    grid = {
        "spiky": {"a": 0.5, "b": 1.0, "c": 0.5},
        "even": {"a": 0.4, "b": 0.75, "c": 0.75},
    }
    _, rows = loco_table(_rows(grid))
    assert {r["held_out"]: r["chosen"] for r in rows}["a"] == "even"
    with pytest.raises(SystemExit, match="missing"):
        loco_table(_rows(grid)[:-1])
    with pytest.raises(SystemExit, match="two categories"):
        loco_table(_rows({"spiky": {"a": 0.5}}))
