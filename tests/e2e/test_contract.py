"""schemathesis against a real `energy-engine serve` and the OpenAPI document it serves: valid
and invalid requests alike get an answer the document describes, and never a server error.

The run is short enough for every CI run; `st run http://HOST:PORT/openapi.json -n 500`
against a running engine is the long version.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from tests.conftest import AUTH, cloned_database
from tests.e2e.test_serve import serve

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = SchemathesisConfig.from_dict(
    {
        "headers": AUTH,  # the test databases' admin key: every route is reachable
        "generation": {
            "mode": "all",  # valid and invalid data
            "max-examples": 40,
            "deterministic": True,
        },
        "checks": {
            # Rules that JSON Schema cannot say are still checked by the engine and answered
            # with 422: times relative to now (a reading older than 30 days, a window longer
            # than 90 days or ending before it starts) and cursors the engine gave out.
            # 404: ids the schema allows but no device has; 409: assignment boundaries.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "422"]},
        },
    }
)


@pytest.fixture(scope="module")
def engine_url(
    postgres_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with (
        cloned_database(postgres_url, template_database, "contract") as url,
        serve({"DATABASE_URL": url}, Path(tmp_path_factory.mktemp("serve"))) as (base, _),
    ):
        yield base


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_is_one_the_document_describes(engine_url: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{engine_url}/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 13
    if mode is GenerationMode.NEGATIVE:
        # An operation with neither parameters nor a body has no invalid request to make.
        operations = [
            op
            for op in operations
            if {"parameters", "requestBody"} & schema.raw_schema["paths"][op.path][op.method].keys()
        ]
        assert len(operations) >= 10
    for operation in operations:
        _answers_as_documented(operation.as_strategy(generation_mode=mode))


def _answers_as_documented(strategy: Any) -> None:
    @hypothesis.settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def check(case: Any) -> None:  # a schemathesis.Case
        case.call_and_validate()

    check()
