"""docs/analytics-plans.md is what `make plans` writes today."""

from __future__ import annotations

import difflib

from tests import plans


def test_the_plans_document_is_current() -> None:
    page = plans.render_embedded()
    committed = plans.DOC.read_text(encoding="utf-8")
    diff = "\n".join(
        list(difflib.unified_diff(committed.splitlines(), page.splitlines(), lineterm=""))[:60]
    )
    assert page == committed, f"docs/analytics-plans.md is stale: run `{plans.COMMAND}`\n{diff}"
