"""The benchmark's pure parts: variant specs, the leave-one-category-out selection, the per-type table."""

from __future__ import annotations

import json

import pytest

from anomaly_spotter.bench.detectors import loco_table, parse_variant, per_type_table


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


def test_grown_training_set_repeats_with_flips_and_small_shifts() -> None:
    import numpy as np

    from anomaly_spotter.bench.detectors import MAX_SHIFT, grow_training_set

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    grown = grow_training_set(images, 50, seed=1)
    assert grown.shape == (50, 32, 32, 3) and grown.dtype == np.uint8
    np.testing.assert_array_equal(grown[:3], images)  # the originals first, untouched
    assert not any(np.array_equal(grown[i], images[i % 3]) for i in range(3, 50))  # every copy altered
    np.testing.assert_array_equal(grown, grow_training_set(images, 50, seed=1))  # seeded
    # a copy is its original mirrored and shifted by at most MAX_SHIFT px: some placement matches exactly
    copy, original = grown[3], images[0]
    found = False
    for flip_lr in (False, True):
        for flip_ud in (False, True):
            img = original[:, ::-1] if flip_lr else original
            img = img[::-1] if flip_ud else img
            for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
                for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
                    inner = copy[MAX_SHIFT:-MAX_SHIFT, MAX_SHIFT:-MAX_SHIFT]
                    ref = img[MAX_SHIFT + dy : 32 - MAX_SHIFT + dy, MAX_SHIFT + dx : 32 - MAX_SHIFT + dx]
                    found |= np.array_equal(inner, ref)
    assert found


def test_a_variants_seed_changes_the_detector_not_the_split(tiny_mvtec) -> None:
    """`seed=N` in a variant reseeds the detector only: the same seed gives the same row, another seed
    another model scored on the same test images."""
    from anomaly_spotter.bench.detectors import run_job
    from tests.conftest import REPO

    spec = "unet_ae:image_size=32,encoder_channels=[4],bottleneck_channels=8,map_kind=residual"
    spec += ",train.max_epochs=2"
    rows = [run_job(tiny_mvtec, "widget", f"{spec},seed={s}", REPO / "params.yaml")[0] for s in (1, 1, 2)]
    keys = ("image_auroc", "pixel_auroc", "aupro", "n_train")
    assert [rows[0][k] for k in keys] == [rows[1][k] for k in keys]
    assert rows[0]["pixel_auroc"] != rows[2]["pixel_auroc"] and rows[0]["n_train"] == rows[2]["n_train"]


def test_sigmas_rescore_one_fit_at_each_smoothing(tiny_mvtec) -> None:
    """`--sigmas`: one fit, one row per smoothing, each the same as a fit made at that smoothing."""
    from anomaly_spotter.bench.detectors import run_job
    from tests.conftest import REPO

    spec = "unet_ae:image_size=32,encoder_channels=[4],bottleneck_channels=8,map_kind=residual"
    spec += ",train.max_epochs=2,label=tiny"
    rows = run_job(tiny_mvtec, "widget", spec, REPO / "params.yaml", sigmas=[0.0, 3.0])
    assert [r["variant"] for r in rows] == ["tiny sigma=0", "tiny sigma=3"]
    assert rows[0]["fit_s"] == rows[1]["fit_s"]  # one fit
    assert rows[0]["pixel_auroc"] != rows[1]["pixel_auroc"]
    refit = run_job(tiny_mvtec, "widget", f"{spec},sigma=3", REPO / "params.yaml")
    assert [refit[0][k] for k in ("image_auroc", "pixel_auroc")] == [
        rows[1][k] for k in ("image_auroc", "pixel_auroc")
    ]


def test_per_type_table_has_a_row_per_category_and_type_and_a_column_per_variant() -> None:
    rows = [
        {"variant": "a", "category": "board", "per_type": {"missing": 1.0, "count": 0.885}},
        {"variant": "b", "category": "board", "per_type": {"missing": 0.9, "count": 0.9375}},
        {"variant": "a", "category": "pill", "per_type": {"crack": 0.97321}},
        {"variant": "b", "category": "pill", "per_type": {}},  # a type a variant has no value for: blank
    ]
    lines = per_type_table(rows).splitlines()
    assert lines[0] == "| category | defect type | a | b |"
    assert lines[2:] == [
        "| board | missing | 1.0000 | 0.9000 |",
        "| board | count | 0.8850 | 0.9375 |",
        "| pill | crack | 0.9732 |  |",
    ]
    with pytest.raises(SystemExit, match="new --cache"):  # rows cached before per-type values were kept
        per_type_table([{"variant": "a", "category": "board", "image_auroc": 0.9}])


def test_seeds_name_each_run_and_summarise_mean_spread_and_range() -> None:
    """`--seeds`: each variant once per seed, rows named `<label> seed=<s>` (a `--sigmas` suffix kept in
    the base), and a summary per (variant, category) with the mean, the sample standard deviation and the
    range over the seeds."""
    from anomaly_spotter.bench.detectors import name_seeded, seed_summary, seed_table, seeded

    specs = seeded("unet_ae:sigma=5,label=ema", [0, 1, 2])
    assert specs[1] == ("unet_ae:sigma=5,label=ema,seed=1", "ema", 1)
    assert seeded("unet_ae", [4])[0] == ("unet_ae:seed=4", "unet_ae", 4)
    with pytest.raises(SystemExit, match="sets its own seed"):
        seeded("unet_ae:seed=3", [0])
    rows = []
    for (spec, base, seed), image, pixel in zip(specs, (0.90, 0.94, 0.92), (0.85, 0.85, 0.88), strict=True):
        job = [
            {
                "variant": f"ema sigma={s}",
                "category": "pill",
                "image_auroc": image - s / 100,
                "pixel_auroc": pixel,
                "aupro": 0.5,
                "f1_max": 0.9,
                "fit_s": 200.0 + seed,
                "ms_per_image": 20.0,
                "peak_mb": 900.0,
            }
            for s in (1, 5)
        ]
        rows += name_seeded(job, spec, base, seed)
    assert [r["variant"] for r in rows[:2]] == ["ema sigma=1 seed=0", "ema sigma=5 seed=0"]
    summary = {r["variant"]: r for r in seed_summary(rows)}
    one = summary["ema sigma=1"]
    assert one["seeds"] == [0, 1, 2] and one["category"] == "pill"
    assert one["image_auroc"] == pytest.approx(0.91)
    assert one["image_auroc_std"] == pytest.approx(0.02)  # sample standard deviation of 0.89, 0.93, 0.91
    assert (one["image_auroc_min"], one["image_auroc_max"]) == pytest.approx((0.89, 0.93))
    assert one["pixel_auroc_std"] == pytest.approx(0.0173205, rel=1e-5)  # 0.85, 0.85, 0.88
    assert (one["fit_s"], one["fit_s_max"]) == (201.0, 202.0)
    assert summary["ema sigma=5"]["image_auroc"] == pytest.approx(0.87)
    table = seed_table(list(summary.values())).splitlines()
    assert table[2].startswith("| ema sigma=1 | pill | 0 1 2 | 0.910 ± 0.020 (0.890-0.930) |")
    assert table[2].endswith("| 201 (202) |")


def test_add_rows_tables_earlier_reports_together_without_fitting(tmp_path, capsys) -> None:
    """`--add-rows`: two seeded reports' rows compared (seed means, leave-one-category-out) with nothing
    fitted; a file that is not such a report is refused by name."""
    from anomaly_spotter.bench.detectors import main

    def report(name: str, variant: str, image: dict[str, list[float]]) -> str:
        rows = [
            {
                "variant": f"{variant} seed={seed}",
                "base": variant,
                "seed": seed,
                "category": category,
                "image_auroc": value,
                "pixel_auroc": 0.9,
                "aupro": 0.5,
                "f1_max": 0.9,
                "fit_s": 100.0 + seed,
                "ms_per_image": 20.0,
                "peak_mb": 900.0,
            }
            for category, values in image.items()
            for seed, value in enumerate(values)
        ]
        path = tmp_path / name
        path.write_text(json.dumps({"rows": rows, "seeds": [], "loco": {}}))
        return str(path)

    old = report("old.json", "one", {"a": [0.80, 0.90, 0.85], "b": [0.70, 0.70, 0.70], "c": [0.9, 0.9, 0.9]})
    new = report("new.json", "two", {"a": [0.86, 0.88, 0.87], "b": [0.75, 0.76, 0.77], "c": [0.8, 0.8, 0.8]})
    out = tmp_path / "both.md"
    main(["--add-rows", old, "--add-rows", new, "--loco", "--out", str(out)])
    payload = json.loads(out.with_suffix(".json").read_text())
    means = {(r["variant"], r["category"]): r["image_auroc"] for r in payload["seeds"]}
    assert means["one", "a"] == pytest.approx(0.85) and means["two", "b"] == pytest.approx(0.76)
    chosen = {r["held_out"]: r["chosen"] for r in payload["loco"]["image_auroc"]}
    assert chosen == {"a": "one", "b": "one", "c": "two"}  # each fold's mean over the other two
    text = out.read_text()
    assert "| one | a | 0 1 2 | 0.850 ± 0.050 (0.800-0.900) |" in text
    assert f"rows added from {old}, {new}" in text and "machine:" not in text
    with pytest.raises(SystemExit, match=r"same variant and category twice: \[\('one seed=0', 'a'\)"):
        main(["--add-rows", old, "--add-rows", old])
    (tmp_path / "plain.json").write_text(json.dumps({"rows": [{"layout": "contiguous"}]}))
    with pytest.raises(SystemExit, match=r"plain\.json: expected the JSON a --out of this benchmark"):
        main(["--add-rows", str(tmp_path / "plain.json")])


def test_unet_layout_bench_times_both_layouts_of_the_same_network(tmp_path) -> None:
    """bench.unet_layout: the params file's unet_ae in both memory layouts, one function up to rounding."""
    from anomaly_spotter.bench.unet_layout import BF16, LAYOUTS, main

    out = tmp_path / "layout.md"
    main(["--size", "32", "--repeats", "2", "--warmup", "0", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["layout"] for r in rows] == [*LAYOUTS, BF16]
    assert all(r["train_step_ms"] > 0 and r["score_ms_per_image"] > 0 for r in rows)
    assert rows[0]["speedup_train"] == 1.0 and rows[1]["speedup_train"] > 0
    assert 0 <= rows[0]["max_map_difference"] < 1e-4  # the same weights give the same maps
    assert "| channels_last |" in out.read_text() and "32 px images" in out.read_text()
