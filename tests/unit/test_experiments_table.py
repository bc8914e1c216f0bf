"""`anomaly-spotter experiments`: `dvc exp show --json` as one table that reads in 120 columns."""

from __future__ import annotations

from typing import Any

from anomaly_spotter.cli.experiments import changed_params, render, rows_from_json

OVERALL = "metrics/overall.json"


def _data(lr: float, members: list, auroc: float | None, categories: list[str]) -> dict[str, Any]:
    params = {
        "seed": 42,
        "data": {"root": "data/builtin", "categories": categories},
        "model": {"patchcore": {"members": members, "sigma": 6.0}, "unet_ae": {"training": {"lr": lr}}},
    }
    headline = {"image_auroc": auroc, "pixel_auroc": 0.9, "aupro": None, "f1": 0.8, "false_alarm_rate": 0.25}
    return {
        "params": {"params.yaml": {"data": params}},
        "metrics": {OVERALL: {"data": headline}, "metrics/categories/fabric.json": {"data": {"f1": 0.5}}},
        "deps": {f"anomaly_spotter/m{i}.py": {"hash": "0" * 32} for i in range(70)},
    }


def _shown() -> list[dict[str, Any]]:
    """What `dvc exp show --json` prints: the workspace, then a commit with two experiments."""
    four = ["fabric", "washer", "label", "board"]
    return [
        {"rev": "workspace", "name": None, "data": _data(0.001, [[3], [2, 3]], 0.98765, four)},
        {
            "rev": "1" * 40,
            "name": "main",
            "data": _data(0.001, [[3], [2, 3]], 0.98765, four),
            "experiments": [
                {
                    "name": "members-3",
                    "executor": {"state": "success"},
                    "revs": [{"rev": "2" * 40, "name": "members-3", "data": _data(0.001, [[3]], 0.97, four)}],
                },
                {
                    "name": "failed-one",
                    "executor": {"state": "failed"},
                    "revs": [
                        {"rev": "3" * 40, "name": "failed-one", "data": _data(0.002, [[3]], None, four)}
                    ],
                },
            ],
        },
    ]


def test_rows_carry_names_states_params_and_one_files_metrics() -> None:
    rows = rows_from_json(_shown(), OVERALL)
    assert [r.name for r in rows] == ["workspace", "main", "├── members-3", "└── failed-one"]
    assert [r.state for r in rows] == ["-", "-", "success", "failed"]
    assert rows[2].params["model.patchcore.members"] == [[3]] and rows[2].metrics["image_auroc"] == 0.97
    assert changed_params(rows) == ["model.patchcore.members", "model.unet_ae.training.lr"]
    assert rows_from_json(_shown(), "metrics/categories/fabric.json")[0].metrics == {"f1": 0.5}


def test_the_table_fits_120_columns_with_short_headers() -> None:
    table = render(rows_from_json(_shown(), OVERALL), OVERALL)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert (
        lines[0]
        == f"metrics: {OVERALL}; changed parameters: model.patchcore.members, model.unet_ae.training.lr"
    )
    assert lines[2].split() == [
        "Experiment", "State", "members", "lr", "image_auroc", "pixel_auroc", "aupro", "f1", "false_alarms"
    ]  # fmt: skip
    assert lines[6].split() == "├── members-3 success [[3]] 0.001 0.9700 0.9000 - 0.8000 0.2500".split()
    assert "0.9877" in lines[4]  # 4 decimals
    assert lines[7].split()[:6] == ["└──", "failed-one", "failed", "[[3]]", "0.002", "-"]  # no "nan"


def test_long_parameter_values_are_cut_to_fit() -> None:
    shown = _shown()
    shown[1]["experiments"][0]["revs"][0]["data"]["params"]["params.yaml"]["data"]["data"]["categories"] = [
        f"category_{i}" for i in range(30)
    ]
    lines = render(rows_from_json(shown, OVERALL), OVERALL).splitlines()
    assert max(len(line) for line in lines) <= 120  # the values cut
    assert any("…" in line for line in lines) and "categories" in lines[2].split()
    narrow = render(rows_from_json(shown, OVERALL), OVERALL, width=80).splitlines()
    assert max(len(line) for line in narrow[:2]) <= 80 and narrow[1].startswith("  ")  # the title wrapped
