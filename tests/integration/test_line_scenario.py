"""Closing the loop, end to end, with the CLI as a user runs it (docs/line.md "A changed line, end to end";
`anomaly_spotter.bench.line` runs the steps and measures them).

A repository with this pipeline on the built-in component and washer at the default settings runs `dvc
repro`; the line then changes (a new lamp). The champion flags the changed good parts and `monitor` alerts;
a reviewer marks the flagged good parts of day 1 as false alarms; `dvc repro` retrains component only;
`promote` accepts the new version (test metrics and the field gate); on day 2's changed good parts, which
no model saw, the new champion flags far fewer, its recall on the test defects is unchanged, and `monitor`
on the day-2 log shows the flagged share back down.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_spotter.bench.line import LineScenario, run_scenario
from tests.integration.test_pipeline import _env, _run, new_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CATEGORY = "component"
OTHER = "washer"  # reviewed nothing: must not retrain
REVIEWED = 30


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[LineScenario, Path]:
    project = new_project(tmp_path_factory.mktemp("line"), {"data": {"categories": [CATEGORY, OTHER]}})
    _run(["dvc", "repro"], project)
    return run_scenario(project, CATEGORY, REVIEWED, env=_env(project)), project


def test_the_champion_flags_the_changed_line_and_monitor_alerts(scenario: tuple[LineScenario, Path]) -> None:
    result, _ = scenario
    assert result.champion == "1"
    assert result.day1_flagged >= 0.9  # measured: 40 of 40
    assert result.day1_monitor_exit == 3 and result.day1_monitor.startswith("ALERT")


def test_review_retrains_the_reviewed_category_only(scenario: tuple[LineScenario, Path]) -> None:
    result, project = scenario
    stages = set(result.repro_stages)
    assert {f"prepare@{CATEGORY}", f"train@{CATEGORY}", f"register@{CATEGORY}"} <= stages
    assert f"train@{OTHER}" not in stages and f"process_all@{OTHER}" not in stages
    # register@washer reran (metrics.json changed with component's numbers) and registered nothing new
    decisions = (project / "feedback" / CATEGORY / "decisions.csv").read_text().splitlines()
    assert len(decisions) == 1 + REVIEWED and all(",qa,false_alarm," in line for line in decisions[1:])
    assert (project / "feedback" / f"{CATEGORY}.dvc").is_file()
    assert 0 < result.field_goods < REVIEWED  # some reviewed goods held out of training
    # MLflow: the new version names the feedback data version it was trained with; washer's runs say none
    tags = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import json; from mlflow import MlflowClient; c = MlflowClient(); "
                f"print(json.dumps([dict(c.get_model_version('anomaly-spotter-{CATEGORY}', '2').tags), "
                f"dict(c.get_model_version('anomaly-spotter-{OTHER}', '1').tags), "
                f"len(c.search_model_versions(\"name = 'anomaly-spotter-{OTHER}'\"))]))",
            ],
            cwd=project,
            env=_env(project),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    from anomaly_spotter.tracking import content_md5

    assert tags[0]["feedback_version"] == content_md5(project / "feedback" / CATEGORY)
    assert tags[1]["feedback_version"] == "none" and tags[2] == 1
    assert tags[0]["field_false_alarm_rate"] is not None


def test_promote_accepts_and_the_changed_line_recovers(scenario: tuple[LineScenario, Path]) -> None:
    result, _ = scenario
    assert result.promote_exit == 0 and result.promote.startswith("promoted version 2 to champion")
    assert "field set:" in result.promote and result.new_version == "2"
    # day 2: changed good parts no model saw; measured: 45 % flagged by the new champion, 100 % by the old
    assert result.day2_old_flagged_goods >= 0.9
    assert result.day2_flagged_goods <= result.day2_old_flagged_goods - 0.4
    assert abs(result.recall_new - result.recall_old) <= 0.02  # on the test split's defects
    assert result.day2_defects_caught == "2/2"
    # monitor on the later log: the flagged share is back near what the held-out goods give
    assert result.day2_flagged_goods - result.day2_expected < result.day1_flagged - result.day1_expected - 0.4
