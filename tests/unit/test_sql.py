"""The named-statement loader, and that every domain's statements are the ones its code uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from energy_engine import sql

PACKAGE = Path(sql.__file__).parent


def test_statements_are_read_by_name_with_their_comments() -> None:
    queries = sql.parse(
        "x.sql",
        "-- Header.\n\n-- name: first\n-- What it does.\nSELECT 1;\n\n-- name: second\nSELECT $1\n",
    )
    assert queries.names() == ["first", "second"]
    assert queries.first == "-- What it does.\nSELECT 1"
    assert queries.second == "SELECT $1"
    with pytest.raises(AttributeError, match=r"x\.sql has no statement named 'third'"):
        _ = queries.third


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("SELECT 1;\n-- name: a\nSELECT 2", "before the first"),
        ("-- name: a\nSELECT 1\n-- name: a\nSELECT 2", "defined twice"),
        ("-- name: a\n-- only a comment\n-- name: b\nSELECT 2", "'a' is empty"),
    ],
)
def test_malformed_files_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        sql.parse("x.sql", text)


def test_each_statement_is_used_and_each_use_exists() -> None:
    """A domain's code names exactly the statements its file holds: none dead, none missing."""
    found = {}
    for path in sorted(PACKAGE.rglob("queries.sql")):
        defined = set(sql.parse(str(path), path.read_text()).names())
        used: set[str] = set()
        for module in path.parent.glob("*.py"):
            used |= set(re.findall(r"\bqueries\.([a-z_][a-z0-9_]*)\b", module.read_text()))
        used -= {"names"}
        domain = path.parent.name
        found[domain] = (sorted(used - defined), sorted(defined - used))
    assert found.keys() >= {"ingest", "importer", "rollups", "analytics", "status", "assignments"}
    assert {domain: gaps for domain, gaps in found.items() if gaps != ([], [])} == {}


def test_no_python_module_writes_sql_itself() -> None:
    """The upsert and the energy rule live in SQL files only (issue: one home for SQL)."""
    offenders = [
        str(module.relative_to(PACKAGE))
        for module in PACKAGE.rglob("*.py")
        if re.search(r"ON CONFLICT|energy_increment\(|energy_plausible\(", module.read_text())
    ]
    assert offenders == []
