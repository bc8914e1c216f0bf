"""The package's shape, derived from its imports: no cycles, no private names taken from another module,
each folder importing only the folders beneath it, and a served model that ships and imports the scoring
code alone (no Streamlit, PySpark, psycopg, tracking, pipeline, CLI or benchmarks).

`python -m tests.unit.test_architecture` prints the figures docs/architecture.md quotes: modules per folder,
the deepest import chain and the largest module."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.unit.test_dvc_declarations import _walk_runtime as runtime_nodes

PACKAGE = "anomaly_spotter"
# folder -> the folders its modules may import (besides itself); the layering docs/architecture.md draws
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "data": {"core"},
    "detectors": {"core", "data"},
    "serving": {"core", "data", "detectors"},
    "tracking": {"core"},
    "feedback": {"core", "data", "serving"},
    "monitoring": {"core"},
    "pipeline": {"core", "data", "detectors", "feedback", "serving", "tracking"},
    "deploy": {"core", "data", "detectors", "serving", "tracking"},
    "review": {"core", "data", "feedback", "monitoring", "pipeline", "serving", "tracking"},
    "cli": {"core", "data", "serving", "deploy", "feedback", "monitoring", "review", "tracking"},
    "bench": {"core", "data", "detectors", "serving", "deploy", "pipeline", "tracking"},
}
BLOCKED_IN_SERVING = ("streamlit", "pyspark", "psycopg", "psycopg2") + tuple(
    f"{PACKAGE}.{folder}" for folder in ("bench", "cli", "deploy", "pipeline", "review", "tracking")
)


def _name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted((REPO / PACKAGE).rglob("*.py")) if "__pycache__" not in p.parts}


@cache
def imports(module: str) -> dict[str, set[str]]:
    """Project modules `module` imports -> the names it takes from each (empty for `import x`)."""
    tree = ast.parse(modules()[module].read_text())
    found: dict[str, set[str]] = {}
    for node in runtime_nodes(tree):  # lazy imports in functions too, not `if TYPE_CHECKING:` bodies
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules():
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules():  # `from pkg import module`
                    found.setdefault(sub, set())
                else:
                    found.setdefault(node.module, set()).add(alias.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value:
            target = node.value.partition(":")[0]  # the detector registry's lazy "module:Class"
            if target in modules():
                found.setdefault(target, set())
    found.pop(module, None)
    return found


def graph() -> dict[str, set[str]]:
    return {m: set(imports(m)) for m in modules()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return (
        parts[1] if len(parts) > 2 or (len(parts) == 2 and modules()[module].name == "__init__.py") else None
    )


def deepest_chain() -> list[str]:
    edges = graph()

    @cache
    def longest(m: str) -> tuple[str, ...]:
        tails = [longest(n) for n in edges[m]]
        return (m, *max(tails, key=len, default=()))

    return list(max((longest(m) for m in edges), key=len))


def test_the_import_graph_has_no_cycles() -> None:
    assert _cycles(graph()) == []


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_takes_another_modules_private_names() -> None:
    taken = [
        f"{module} takes {name} from {source}"
        for module in modules()
        for source, names in imports(module).items()
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert taken == []


def test_each_folder_imports_only_the_folders_beneath_it() -> None:
    wrong = []
    for module in modules():
        folder = _folder(module)
        for target in imports(module):
            to = _folder(target)
            if folder and to and to != folder and to not in ALLOWED[folder]:
                wrong.append(f"{module} ({folder}/) imports {target} ({to}/)")
    assert wrong == [], "see ALLOWED: " + "; ".join(wrong)
    assert set(ALLOWED) == {_folder(m) for m in modules()} - {None}, "a folder is missing from ALLOWED"


def test_served_model_ships_and_imports_only_the_scoring_code(tmp_path: Path) -> None:
    from anomaly_spotter.serving.inference import InferenceConfig
    from anomaly_spotter.serving.model import SERVED_FOLDERS, save_service_model
    from tests.unit.test_inference import tiny_detector

    detector = tiny_detector()
    detector.save(tmp_path / "model.pt")
    config = InferenceConfig.for_model(detector, "part", 32, 0.5, "good_only", "max", 4, "otsu")
    save_service_model(tmp_path / "served", tmp_path / "model.pt", config, detector.kind)
    shipped = tmp_path / "served" / "code" / PACKAGE
    assert sorted(p.name for p in shipped.iterdir() if p.is_dir()) == sorted(SERVED_FOLDERS)
    np.save(tmp_path / "image.npy", np.full((32, 32, 3), 128, np.uint8))
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        import numpy as np

        BLOCKED = {BLOCKED_IN_SERVING!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError(f"blocked in this test: {{name}}")
                return None

        # a serving environment without the package installed: only the model's own code/ can provide it
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        sys.meta_path.insert(0, Block())
        import mlflow

        model = mlflow.pyfunc.load_model({str(tmp_path / "served")!r}).unwrap_python_model()
        rows = model.score([np.load({str(tmp_path / "image.npy")!r})])
        loaded = [m for m in sys.modules if m.startswith("{PACKAGE}")]
        print(sys.modules["{PACKAGE}.serving.model"].__file__)
        print(rows[0]["verdict"], sorted(loaded))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    where, verdict_and_modules = result.stdout.strip().splitlines()[-2:]
    assert Path(where).is_relative_to(shipped), f"scored with {where}, not the model's own code"
    assert verdict_and_modules.split()[0] in ("good", "defective")
    for blocked in BLOCKED_IN_SERVING:
        assert blocked not in verdict_and_modules


def test_models_registered_before_the_folders_still_load(tmp_path: Path) -> None:
    """Their code file imports `anomaly_spotter.serving.ServiceModel` (then a module, now a folder)."""
    import mlflow

    from anomaly_spotter.serving.inference import InferenceConfig
    from anomaly_spotter.serving.model import MODEL_CODE_FILE, save_service_model
    from tests.unit.test_inference import tiny_detector

    detector = tiny_detector()
    detector.save(tmp_path / "model.pt")
    config = InferenceConfig.for_model(detector, "part", 32, 0.5, "good_only", "max", 4, "otsu")
    save_service_model(tmp_path / "served", tmp_path / "model.pt", config, detector.kind)
    (code_file,) = (tmp_path / "served").rglob(MODEL_CODE_FILE)
    code = code_file.read_text()
    assert "from anomaly_spotter.serving.model import ServiceModel" in code
    code_file.write_text(code.replace("anomaly_spotter.serving.model", "anomaly_spotter.serving"))
    model = mlflow.pyfunc.load_model(str(tmp_path / "served")).unwrap_python_model()
    (row,) = model.score([np.full((32, 32, 3), 128, np.uint8)])
    assert row["verdict"] in ("good", "defective")


def report() -> str:
    per_folder = Counter(_folder(m) or "(top)" for m in modules())
    largest = max(modules().values(), key=lambda p: len(p.read_text().splitlines()))
    chain = deepest_chain()
    lines = [f"{len(modules())} modules, {sum(len(v) for v in graph().values())} import edges"]
    lines += [f"  {folder}/: {n}" for folder, n in sorted(per_folder.items())]
    lines.append(f"deepest import chain: {len(chain)} modules: {' > '.join(chain)}")
    n_lines = len(largest.read_text().splitlines())
    lines.append(f"largest module: {largest.relative_to(REPO)} ({n_lines} lines)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
    pytest.main([__file__, "-q"]) if "--test" in sys.argv else None
