"""Named SQL statements, kept in `.sql` files beside the Python that runs them.

Each domain has a `queries.sql`: statements separated by a `-- name: <identifier>` line, each
with its comment (what it does, why it is written so) above the SQL. `load` reads the file once,
at import, and hands the texts out by attribute: `queries.insert_meter_readings`.

Written here rather than taken from aiosql: the engine runs each text with asyncpg itself
(prepared and cached per connection, `fetchval`/`executemany`/`copy`, EXPLAIN in tests and in
docs/analytics-plans.md), so what it needs is the text by name, not a function wrapped around
each statement. Parsing that takes the few lines below.
"""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class Queries:
    """The statements of one `.sql` file, by name; an unknown name is an AttributeError."""

    def __init__(self, source: str, statements: dict[str, str]) -> None:
        self._source = source
        self._statements = statements

    def __getattr__(self, name: str) -> str:
        try:
            return self._statements[name]
        except KeyError:
            raise AttributeError(f"{self._source} has no statement named {name!r}") from None

    def names(self) -> list[str]:
        """Every statement's name, in file order."""
        return list(self._statements)


def parse(source: str, text: str) -> Queries:
    """The named statements of `text` (read from `source`, which error messages name)."""
    parts = _NAME.split(text)
    if parts[0].strip() and not all(
        line.startswith("--") for line in parts[0].strip().splitlines()
    ):
        raise ValueError(f"{source}: SQL before the first '-- name:' line")
    statements: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        statement = body.strip().removesuffix(";").rstrip()
        if name in statements:
            raise ValueError(f"{source}: statement {name!r} is defined twice")
        if not statement or all(line.startswith("--") for line in statement.splitlines()):
            raise ValueError(f"{source}: statement {name!r} is empty")
        statements[name] = statement
    return Queries(source, statements)


def load(package: str, filename: str = "queries.sql") -> Queries:
    """The named statements of `filename` in `package` (e.g. `energy_engine.ingest`)."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    return parse(f"{package.replace('.', '/')}/{filename}", text)
