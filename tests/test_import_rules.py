"""The import direction of DESIGN.md, read from the source (AST), so a violation fails here, not in review.

    cli -> workflows -> stages (propose, proxy, search, train) -> tools (prune, latency) -> core
        -> models, data (data, detection_data) -> utilities (fileio, settings, threads) -> errors

A package may import itself and anything in a lower layer; stages do not import each other; ``search/``
imports nothing of acp but ``core/``, ``settings`` and the utilities. Imports inside functions count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import acp

PACKAGE = Path(acp.__file__).resolve().parent

LAYERS = {
    "errors": 0,
    "utilities": 1,
    "models": 2,
    "data": 2,
    "core": 3,
    "tools": 4,
    "stages": 5,
    "workflows": 6,
    "cli": 7,
    "testing": 7,
    "api": 8,
}
UNITS = {
    "acp.errors": "errors",
    "acp.fileio": "utilities",
    "acp.settings": "utilities",
    "acp.threads": "utilities",
    "acp.models": "models",
    "acp.data": "data",
    "acp.detection_data": "data",
    "acp.datacache": "utilities",
    "acp.core": "core",
    "acp.prune": "tools",
    "acp.latency": "tools",
    "acp.propose": "stages",
    "acp.proxy": "stages",
    "acp.search": "stages",
    "acp.train": "stages",
    "acp.workflows": "workflows",
    "acp.cli": "cli",
    "acp.testing": "testing",
    "acp": "api",
    "acp.__main__": "api",
}
SEARCH_MAY_IMPORT = {"acp.core", "acp.settings", "acp.errors", "acp.fileio", "acp.search"}
# acp.search and acp.propose are also the public functions acp.search(...) / acp.propose(...): calling the
# package runs the workflow.
# acp.detection_data shares classification's split record (acp.data.Splits) so runs record both alike.
ALLOWED_EXCEPTIONS = {
    ("acp.search", "acp.workflows.search"),
    ("acp.propose", "acp.workflows.propose"),
    ("acp.detection_data", "acp.data"),
}


def unit_of(module: str) -> str:
    """The top-level unit a dotted module name belongs to (acp.core.space -> acp.core)."""
    parts = module.split(".")
    for length in range(min(len(parts), 2), 0, -1):
        candidate = ".".join(parts[:length])
        if candidate in UNITS:
            return candidate
    raise AssertionError(f"{module} belongs to no unit of the layer table; add it to UNITS")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def acp_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "acp"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] == "acp":
                if target == "acp":  # from acp import x: x is a submodule or an API name
                    found += [(node.lineno, f"acp.{alias.name}") for alias in node.names]
                else:
                    found.append((node.lineno, target))
    return found


def violations(imports=acp_imports) -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        source_unit = unit_of(source)
        for line, target in imports(path):
            if target in ("acp.__version__",):
                continue
            target_unit = unit_of(target) if target != "acp" else "acp"
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            if (source_unit, target) in ALLOWED_EXCEPTIONS or (source, target) in ALLOWED_EXCEPTIONS:
                continue
            if target_unit == source_unit:
                continue
            if source_unit == "acp.search" and target_unit not in SEARCH_MAY_IMPORT:
                problems.append(f"{where}: search/ imports only core/, settings and the utilities")
                continue
            source_layer, target_layer = LAYERS[UNITS[source_unit]], LAYERS[UNITS[target_unit]]
            if target_layer >= source_layer:
                problems.append(
                    f"{where}: {UNITS[source_unit]} ({source_unit}) may not import {UNITS[target_unit]} "
                    f"({target_unit})"
                )
    return problems


def test_imports_follow_the_data_flow():
    assert violations() == []


def test_the_rule_catches_upward_and_sideways_imports():
    """The checker itself: core/ importing a workflow, a stage importing another stage, search/ importing
    the proxy -- each is reported."""
    injected = {
        PACKAGE / "core" / "space.py": "acp.workflows.search",
        PACKAGE / "train" / "loop.py": "acp.propose.criteria",
        PACKAGE / "search" / "study.py": "acp.prune",
    }

    def imports(path):
        extra = [(1, injected[path])] if path in injected else []
        return acp_imports(path) + extra

    problems = "\n".join(violations(imports))
    for path, target in injected.items():
        assert f"{path.relative_to(PACKAGE.parent)}:1 imports {target}" in problems


def test_every_module_is_in_the_layer_table():
    for path in PACKAGE.rglob("*.py"):
        unit_of(module_name(path))


def test_benchmarks_use_no_private_names():
    """Benchmarks measure acp through its API: no ``_private`` imports from acp."""
    benchmarks = PACKAGE.parent / "benchmarks"
    for path in sorted(benchmarks.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("acp"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{path.name}:{node.lineno} imports private {private} from {node.module}"


def test_public_functions_named_like_their_packages_stay_callable():
    import acp
    import acp.propose.criteria  # noqa: F401 -- the attribute acp.propose is now the package
    import acp.search.study  # noqa: F401
    from acp.workflows.propose import propose
    from acp.workflows.search import search

    assert callable(acp.propose) and callable(acp.search)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'settings'"):
        acp.propose()  # reaches acp.workflows.propose.propose itself
    assert propose.__module__ == "acp.workflows.propose" and search.__module__ == "acp.workflows.search"
