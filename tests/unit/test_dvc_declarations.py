"""dvc.yaml and params.yaml against the code that runs.

- Every stage depends on all project code its script imports, directly or indirectly (lazy imports inside
  functions included), and on no project code it does not import.
- Every leaf key of params.yaml maps to a field of a params dataclass or a detector's configuration, and
  code outside that class reads the field.
- Each stage declares exactly the params it reads: the `params.<section>.<key>` chains read by the stage
  script and the project functions it passes `params` to, followed recursively. Passing `params` to the
  MLflow logging helpers does not count as reading.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from anomaly_spotter.core.config import Params
from anomaly_spotter.detectors import detector_class
from tests.conftest import REPO

PACKAGE = "anomaly_spotter"
CODE_ROOTS = (PACKAGE, "stages")
# Functions that only log parameters to MLflow: what they are given is not read by the stage.
LOGGING_HELPERS = {"flatten", "params_to_dict", "train_params_logged"}
ACTIVE = "<active>"
REGISTERED = re.compile(
    rf"^{PACKAGE}(\.\w+)+:\w+$"
)  # `model.${model.name}` in dvc.yaml, `params.model.options()` in code


# ------------------------------------------------------------------------------------------------
# project modules and their imports
# ------------------------------------------------------------------------------------------------


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk_runtime(node: ast.AST) -> typing.Iterator[ast.AST]:
    """ast.walk, skipping `if TYPE_CHECKING:` bodies (never executed)."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            yield from (n for branch in child.orelse for n in _walk_runtime_incl(branch))
            continue
        yield child
        yield from _walk_runtime(child)


def _walk_runtime_incl(node: ast.AST) -> typing.Iterator[ast.AST]:
    yield node
    yield from _walk_runtime(node)


def _imported_modules(path: Path) -> set[str]:
    """Project modules `path` imports anywhere (lazy imports too), with their parent packages."""
    found: set[str] = set()
    for node in _walk_runtime(_tree(path)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and REGISTERED.match(node.value):
            names = [node.value.partition(":")[0]]  # the detector registry's "module:Class", imported lazily
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports of {PACKAGE}"
            names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != PACKAGE:
                continue
            for i in range(1, len(parts) + 1):  # a package's __init__ runs before its module
                if _module_file(".".join(parts[:i])) is not None:
                    found.add(".".join(parts[:i]))
    return found


def _code_run_by(script: Path) -> set[Path]:
    """`script` and every project file it imports, directly or indirectly, that holds any code."""
    seen: set[str] = set()
    todo = list(_imported_modules(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imported_modules(_module_file(module)))
    files = {_module_file(m) for m in seen} | {script}
    return {f for f in files if not _only_docstring(f)}


def _only_docstring(path: Path) -> bool:
    body = _tree(path).body
    return not body or (
        len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    )


def _stages() -> dict[str, dict[str, Any]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _script(stage: dict[str, Any]) -> Path:
    words = stage["cmd"].split()
    assert words[0] == "python" and words[1].startswith("stages/"), stage["cmd"]
    return REPO / words[1]


def _code_deps(stage: dict[str, Any]) -> list[str]:
    return [d for d in stage.get("deps", []) if d.split("/")[0] in CODE_ROOTS]


def _covered(file: Path, deps: list[str]) -> bool:
    rel = file.relative_to(REPO).as_posix()
    return any(rel == dep or rel.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_every_stage_depends_on_all_the_code_it_imports() -> None:
    missing = {
        name: sorted(
            f.relative_to(REPO).as_posix()
            for f in _code_run_by(_script(stage))
            if not _covered(f, _code_deps(stage))
        )
        for name, stage in _stages().items()
    }
    missing = {name: files for name, files in missing.items() if files}
    assert missing == {}, f"dvc.yaml: add these files (or their folder) to the stages' deps: {missing}"


def test_no_stage_depends_on_code_it_does_not_import() -> None:
    unused = {}
    for name, stage in _stages().items():
        code = _code_run_by(_script(stage))
        extra = [dep for dep in _code_deps(stage) if not any(_covered(f, [dep]) for f in code)]
        if extra:
            unused[name] = extra
    assert unused == {}, (
        f"dvc.yaml: these code deps are not imported by the stage (reruns for nothing): {unused}"
    )


def test_import_walk_follows_lazy_imports_and_packages() -> None:
    process = {f.relative_to(REPO).as_posix() for f in _code_run_by(REPO / "stages/process_all.py")}
    # the detector registry names its classes as "module:Class" strings, imported lazily: both are found
    assert {
        "anomaly_spotter/detectors/patchcore/detector.py",
        "anomaly_spotter/detectors/unet_ae/detector.py",
    } <= process
    assert "anomaly_spotter/detectors/backbone.py" in process
    # scoring imports the Detector class for annotations only: extract_metrics runs no detector code
    metrics = {f.relative_to(REPO).as_posix() for f in _code_run_by(REPO / "stages/extract_metrics.py")}
    assert not any(f.startswith("anomaly_spotter/detectors") for f in metrics)
    assert "anomaly_spotter/__init__.py" not in process  # empty: no code to depend on


# ------------------------------------------------------------------------------------------------
# params.yaml keys and the code that reads them
# ------------------------------------------------------------------------------------------------


def _params_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _leaves(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in _leaves(value, (*prefix, str(key)))]
    return [prefix]


def _owner(path: tuple[str, ...]) -> tuple[type, str]:
    """The class whose field the params.yaml key `path` sets (a detector's section: its Options)."""
    if path[0] == "model" and len(path) > 2:
        cls, keys, start = detector_class(path[1]).Options, path[2:], 2
    else:
        cls, keys, start = Params, path, 0
    for i, key in enumerate(keys):
        hints = typing.get_type_hints(cls)
        assert key in hints, f"params.yaml {'.'.join(path)}: {cls.__name__} has no field {key!r}"
        if i == len(keys) - 1:
            return cls, key
        cls = hints[key]
        assert dataclasses.is_dataclass(cls), (
            f"params.yaml {'.'.join(path[: start + i + 1])} is not a section"
        )
    raise AssertionError(path)


@cache
def _attributes_read() -> dict[str, set[str]]:
    """Attribute names read in project code, each with the classes in whose bodies they appear."""
    reads: dict[str, set[str]] = {}
    for root in CODE_ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            _collect_attributes(_tree(path), "", reads)
    return reads


def _collect_attributes(node: ast.AST, owner: str, reads: dict[str, set[str]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            _collect_attributes(child, child.name, reads)
            continue
        if isinstance(child, ast.Attribute) and isinstance(child.ctx, ast.Load):
            reads.setdefault(child.attr, set()).add(owner)
        _collect_attributes(child, owner, reads)


def test_every_params_key_sets_a_field_that_code_reads() -> None:
    unread = []
    for path in _leaves(_params_yaml()):
        cls, field = _owner(path)
        # a config dataclass's own body only validates its fields; a detector's methods use its options
        own = {cls.__name__} if dataclasses.is_dataclass(cls) else set()
        readers = _attributes_read().get(field, set()) - own
        if not readers:
            unread.append(f"{'.'.join(path)} ({cls.__name__}.{field})")
    assert unread == [], f"params.yaml keys that no code reads (remove them or use them): {unread}"


def test_unread_key_check_can_fail() -> None:
    # a field read only inside its own class (validation) does not count
    reads = _attributes_read()
    assert reads["val_fraction"] - {"DataParams"}, "data.val_fraction is read by prepare"
    assert "aupro_fpr_limit" in reads and reads["aupro_fpr_limit"] - {"MetricsParams"}


# ------------------------------------------------------------------------------------------------
# which params each stage reads
# ------------------------------------------------------------------------------------------------


@cache
def _module_symbols(path: Path) -> dict[str, str]:
    """Names bound at module level by imports or definitions -> qualified `module.name` (or module)."""
    module = _module_name(path)
    symbols: dict[str, str] = {}
    for node in _walk_runtime(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            for alias in node.names:
                symbols[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    symbols[alias.asname or alias.name] = alias.name
    for node in _tree(path).body:
        if isinstance(node, ast.FunctionDef):
            symbols[node.name] = f"{module}.{node.name}"
    return symbols


def _function(qualified: str) -> tuple[Path, ast.FunctionDef] | None:
    """A top-level project function by qualified name (following `from x import y` re-exports)."""
    module, _, name = qualified.rpartition(".")
    path = _module_file(module)
    if path is None:
        return None
    for node in _tree(path).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return path, node
    target = _module_symbols(path).get(name)
    return _function(target) if target and target != qualified else None


def _callee(path: Path, func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return _module_symbols(path).get(func.id)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        module = _module_symbols(path).get(func.value.id)
        return f"{module}.{func.attr}" if module else None
    return None


def _chain(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """`params.a.b` (or an alias of a section, e.g. `d.root` with `d = params.data`) -> "a.b"."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    prefix = aliases[node.id]
    return ".".join(([prefix] if prefix else []) + names[::-1])


def _reads(path: Path, func: ast.FunctionDef, root: str, depth: int = 0) -> set[str]:
    """params.yaml keys read by `func` in `path`, where its local `root` holds the whole Params."""
    assert depth < 10, f"{path}:{func.name}: params passed too deep"
    aliases = {root: ""}
    inner: set[int] = set()  # nodes already accounted for
    for node in ast.walk(func):  # section aliases: `d = params.data` (a read only through `d.<key>`)
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            chain = _chain(node.value, aliases)
            if chain:
                aliases[node.targets[0].id] = chain
                inner.update(id(n) for n in ast.walk(node.value))
    logged: set[int] = set()
    for node in ast.walk(func):
        if (
            isinstance(node, ast.Call)
            and (_callee(path, node.func) or "").rsplit(".", 1)[-1] in LOGGING_HELPERS
        ):
            logged.update(id(n) for arg in node.args for n in ast.walk(arg))
    reads: set[str] = set()
    used_as_section = {
        node.value.id
        for node in ast.walk(func)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
    }
    # `n = params.train.world_size`: a value, not a section alias, when nothing reads `n.<key>`
    reads |= {chain for name, chain in aliases.items() if chain and name not in used_as_section}
    for node in ast.walk(func):
        if id(node) in logged or id(node) in inner:
            continue
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "options"
        ):
            if _chain(node.func.value, aliases) == "model":  # params.model.options(): the active section
                reads.add(f"model.{ACTIVE}")
                inner.update(id(n) for n in ast.walk(node.func))
                continue
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            chain = _chain(node, aliases)
            if chain:
                reads.add(chain)
                inner.update(id(n) for n in ast.walk(node))
        if isinstance(node, ast.Call):
            for i, arg in enumerate(node.args):
                whole = isinstance(arg, ast.Name) and aliases.get(arg.id) == ""
                if whole and id(arg) not in logged:  # the whole Params goes in
                    reads |= _reads_of_call(path, node, i, depth)
    return {r for r in reads if r}


def _reads_of_call(path: Path, call: ast.Call, index: int, depth: int) -> set[str]:
    qualified = _callee(path, call.func)
    target = _function(qualified) if qualified else None
    assert target is not None, (
        f"{path.relative_to(REPO)}:{call.lineno}: params passed to {ast.unparse(call.func)}, which this test "
        "cannot follow; pass it the sections it needs instead"
    )
    callee_path, callee = target
    return _reads(callee_path, callee, callee.args.args[index].arg, depth + 1)


def _stage_reads(stage: dict[str, Any]) -> set[str]:
    script = _script(stage)
    run = next(n for n in _tree(script).body if isinstance(n, ast.FunctionDef) and n.name == "run")
    return _reads(script, run, "params")


def _declared(stage: dict[str, Any]) -> set[str]:
    return {str(p).replace("${model.name}", ACTIVE) for p in stage.get("params", [])}


def _under(key: str, section: str) -> bool:
    return key == section or key.startswith(section + ".")


def _yaml_leaves(key: str, raw: dict[str, Any]) -> list[str]:
    """The leaf keys under `key` in params.yaml (`model.<active>` as the active detector's section)."""
    node: Any = raw
    parts = key.replace(ACTIVE, raw["model"]["name"]).split(".")
    for part in parts:
        node = node[part]
    return (
        [".".join(parts + list(leaf)) for leaf in _leaves(node)]
        if isinstance(node, dict)
        else [".".join(parts)]
    )


def _normalise(key: str, raw: dict[str, Any]) -> str:
    return key.replace(ACTIVE, raw["model"]["name"])


def test_each_stage_declares_exactly_the_params_it_reads() -> None:
    raw = _params_yaml()
    problems = []
    for name, stage in _stages().items():
        reads = {_normalise(r, raw) for r in _stage_reads(stage)}
        declared = {_normalise(d, raw) for d in _declared(stage)}
        undeclared = sorted(r for r in reads if not any(_under(r, d) for d in declared))
        if undeclared:
            problems.append(f"{name} reads {undeclared} but dvc.yaml does not declare them")
        for key in sorted(declared):
            unread = [leaf for leaf in _yaml_leaves(key, raw) if not any(_under(leaf, r) for r in reads)]
            if unread:
                problems.append(f"{name} declares {key} but does not read {unread}")
    assert problems == [], "\n".join(problems)


def test_train_reads_only_the_active_detector_section() -> None:
    train = _stages()["train"]
    assert _stage_reads(train) >= {"model.name", f"model.{ACTIVE}", "seed", "train.num_threads"}
    assert f"model.{ACTIVE}" in _declared(train)
    assert not any(
        d.startswith(("model.unet_ae", "model.patchcore")) or d == "model" for d in _declared(train)
    )


def test_param_reads_follow_calls_and_aliases() -> None:
    # register reads registry.threshold through `reg = params.registry`; extract_metrics reads the AUPRO
    # limit inside pipeline/evaluate.py; generate hands the whole builtin section to the generator
    assert "registry.threshold" in _stage_reads(_stages()["register"])
    assert "metrics.aupro_fpr_limit" in _stage_reads(_stages()["extract_metrics"])
    assert "builtin" in _stage_reads(_stages()["generate"])
    assert "registry.threshold" in _stage_reads(_stages()["visualize"])  # the served threshold's verdict
