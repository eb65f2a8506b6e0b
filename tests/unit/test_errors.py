"""Which exceptions mean "the database cannot answer now" (503) and which are bugs (500)."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from energy_engine.errors import outage, unavailable

UNREACHABLE = [
    ConnectionRefusedError(111, "Connection refused"),
    FileNotFoundError(2, "No such file or directory"),  # the unix socket is gone
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError(),  # connect, acquire or command timeout
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
]
OUT_OF_TIME = [
    asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    asyncpg.ConfigurationLimitExceededError("temporary file size exceeds temp_file_limit"),
]
BUGS = [
    asyncpg.NumericValueOutOfRangeError("value out of range: overflow"),
    asyncpg.UndefinedColumnError('column "x" does not exist'),
    asyncpg.InterfaceError("the server expects 2 arguments, 1 was passed"),
    ValueError("not a database problem"),
]


@pytest.mark.parametrize("exc", UNREACHABLE, ids=lambda e: type(e).__name__)
def test_unreachable_answers_503_database_unavailable(exc: Exception) -> None:
    found = outage(exc)
    assert found is not None and not found.timeout
    error = unavailable(exc, timedelta(seconds=7))
    assert error is not None
    assert (error.status, error.body.error, error.headers) == (
        503,
        "database_unavailable",
        {"Retry-After": "7"},
    )
    assert found.reason in error.body.message and "\n" not in found.reason


@pytest.mark.parametrize("exc", OUT_OF_TIME, ids=lambda e: type(e).__name__)
def test_out_of_time_answers_503_database_timeout(exc: Exception) -> None:
    error = unavailable(exc, timedelta(seconds=5))
    assert error is not None
    assert (error.status, error.body.error) == (503, "database_timeout")


@pytest.mark.parametrize("exc", BUGS, ids=lambda e: f"{type(e).__name__}:{e}"[:40])
def test_anything_else_stays_an_error(exc: Exception) -> None:
    assert outage(exc) is None
    assert unavailable(exc, timedelta(seconds=5)) is None


def test_connection_refused_reads_as_such() -> None:
    found = outage(ConnectionRefusedError(111, "Connection refused"))
    assert found is not None
    assert (
        found.reason
        == "connection refused: [Errno 111] Connection refused (ConnectionRefusedError)"
    )
