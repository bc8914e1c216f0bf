"""The built-in dataset is a fixture: each category's images, generated with params.yaml's `builtin` section
and `seed`, have a pinned content digest. A dependency or code change that alters a single pixel fails here,
naming the category, instead of silently moving every built-in number (docs/reproducibility.md)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import pytest

from anomaly_spotter.core.config import load_params
from anomaly_spotter.data.builtin import BUILTIN_CATEGORIES, BuiltinSpec, generate_category
from tests.conftest import REPO

# md5 over the sorted relative paths and bytes of data/builtin/<category> (see `content_digest`)
DIGESTS = {
    "fabric": "2687a6b9063027aba0a9e8a0937a52e5",
    "washer": "045da31a92287117fc9c3eb4c2bf3ccc",
    "label": "e2cc0b340d71b6ea4a24d2fa271b7268",
    "board": "44d979731078dd1fbd6564d0472b2bc5",
    "component": "29e4576e1b750537ad4af0802bf78857",
}


def content_digest(folder: Path) -> str:
    md5 = hashlib.md5()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        md5.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return md5.hexdigest()


def test_every_builtin_category_has_a_pinned_digest() -> None:
    assert set(DIGESTS) == set(BUILTIN_CATEGORIES)


@pytest.mark.parametrize("category", BUILTIN_CATEGORIES)
def test_builtin_category_is_generated_bit_for_bit(category: str, tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml")
    generate_category(tmp_path, category, BuiltinSpec(**asdict(params.builtin)), params.seed)
    got = content_digest(tmp_path / category)
    assert got == DIGESTS[category], (
        f"built-in category {category!r} is no longer generated bit for bit (digest {got}, pinned "
        f"{DIGESTS[category]}): a dependency (see requirements.lock) or the generator changed its images. "
        "If that is intended, pin the new digest here, rerun `dvc repro` and commit dvc.lock and the numbers"
    )
