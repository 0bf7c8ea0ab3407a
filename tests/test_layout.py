"""The code stays readable by a newcomer: the folders are the stages, each imports only what
stands below it, no import circles, small modules, numbered migrations.

Every import is read from the source (those inside functions and under TYPE_CHECKING too), so a
lazy import cannot hide a circle or a call back up a floor.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tagger.index import LATEST, MIGRATIONS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tagger"

# Lowest first: a module imports only from its own floor or those below it.
FLOORS: list[tuple[str, ...]] = [
    ("tagger", "tagger.errors", "tagger.fileio", "tagger.inputs", "tagger.yamlfile", "tagger.cpu", "tagger.memory"),
    ("tagger.engine",),
    ("tagger.tags",),
    ("tagger.config",),
    ("tagger.index",),
    ("tagger.vectors",),
    ("tagger.library",),
    ("tagger.cluster",),
    ("tagger.daemon",),
    ("tagger.web",),
    ("tagger.cli",),
    ("tagger.__main__",),
]
# What a Dask worker process may load of tagger: the model floor and the cluster package.
WORKER_MAY_LOAD = ("tagger.engine", "tagger.cluster", *FLOORS[0])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[tuple[str, str]]:
    """(module imported, name imported from it or '') for every tagger import in `name`."""
    path = MODULES[name]
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                module = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add((sub, "") if sub in MODULES else (module, alias.name))
        elif isinstance(node, ast.Import):
            found |= {(alias.name, "") for alias in node.names}
    return {(m, n) for m, n in found if m == "tagger" or m.startswith("tagger.")}


GRAPH = {name: {m for m, _ in imports_of(name) if m in MODULES} for name in MODULES}


def floor_of(module: str) -> int:
    best = [(len(prefix), i) for i, floor in enumerate(FLOORS) for prefix in floor
            if module == prefix or (prefix != "tagger" and module.startswith(prefix + "."))]
    assert best, f"{module} stands on no floor: add it to FLOORS"
    return max(best)[1]


def test_every_module_stands_on_one_floor_and_imports_nothing_above_it() -> None:
    upward = [
        f"{name} (floor {floor_of(name)}) imports {dep} (floor {floor_of(dep)})"
        for name, deps in GRAPH.items() for dep in deps if floor_of(dep) > floor_of(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles() -> None:
    """Tarjan's strongly connected components over the module graph: every one of size one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                circles.append(sorted([v, *component]))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert not circles, circles


def test_private_names_stay_in_their_module() -> None:
    leaks = [
        f"{name} imports {module}.{imported}"
        for name in MODULES for module, imported in imports_of(name)
        if imported.startswith("_") and not imported.startswith("__") and module != name
    ]
    assert not leaks, "\n".join(leaks)


def test_at_most_ten_modules_directly_in_the_package() -> None:
    assert len([p for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]) <= 10


def test_a_dask_worker_loads_only_the_engine_and_the_cluster_package() -> None:
    """In a fresh interpreter, as `tagger worker` starts one: nothing of the index, library or rules."""
    code = "import json, sys, tagger.cluster.worker; print(json.dumps(sorted(m for m in sys.modules if m.startswith('tagger'))))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert "tagger.engine.classify" in loaded  # the check sees the modules the worker does load
    extra = [m for m in loaded if not any(m == p or (p != "tagger" and m.startswith(p + ".")) for p in WORKER_MAY_LOAD)]
    assert not extra, extra


def test_no_module_over_600_lines_and_no_class_over_300() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert text.count("\n") <= 600, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None and node.end_lineno - node.lineno < 300, (path, node.name)


def test_migrations_are_numbered_in_order_and_named() -> None:
    assert [m.number for m in MIGRATIONS] == list(range(1, LATEST + 1))
    assert len({m.name for m in MIGRATIONS}) == len(MIGRATIONS)


def test_the_model_and_the_rules_never_touch_the_database() -> None:
    for name, path in MODULES.items():
        if name.startswith(("tagger.engine", "tagger.tags")):
            assert "sqlite3" not in {m for m, _ in _all_imports(path)}, name


def _all_imports(path: Path) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {(alias.name, "") for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add((node.module or "", ""))
    return found


def _top_level_names(path: Path) -> set[str]:
    """What a module defines or imports at its top level (and under its top-level ifs and trys)."""
    names: set[str] = set()
    body = list(ast.parse(path.read_text(encoding="utf-8")).body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try)):
            body += [*node.body, *getattr(node, "orelse", []), *(h for x in getattr(node, "handlers", []) for h in x.body)]
    return names


def test_bench_scripts_and_tests_import_only_what_exists() -> None:
    """After a move, every `from tagger.x import y` in bench/, scripts/ and tests/ still names a real
    module and a name it defines (read from the source: nothing is imported or run)."""
    missing = []
    for folder in ("bench", "scripts", "tests"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("tagger"):
                    continue
                module = MODULES.get(node.module or "")
                if module is None:
                    missing.append(f"{path.name}: no module {node.module}")
                    continue
                defined = _top_level_names(module)
                for alias in node.names:
                    if alias.name not in defined and f"{node.module}.{alias.name}" not in MODULES:
                        missing.append(f"{path.name}: {node.module} has no {alias.name}")
    assert not missing, "\n".join(missing)
