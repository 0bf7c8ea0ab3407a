"""The code stays readable by a newcomer: small modules and classes, numbered migrations, one
folder policy, and the domain types free of the database."""
from __future__ import annotations

import ast
from pathlib import Path

from tagger.index import LATEST, MIGRATIONS

PACKAGE = Path(__file__).resolve().parent.parent / "tagger"


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


def test_keywords_rules_and_query_language_do_not_import_the_index() -> None:
    for name in ("tags/terms.py", "tags/keywords.py", "tags/querylang.py", "tags/rules.py"):
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if m.startswith(("tagger.index", "sqlite3"))], name
