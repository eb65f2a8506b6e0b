"""The statements of queries.sql by name: each starts at a `-- name: NAME` line.

A dozen lines instead of a library (aiosql reads the same format): the benchmark only needs
the text of each statement, run with asyncpg as the engine runs its own.
"""

from __future__ import annotations

import re
from pathlib import Path

NAME = re.compile(r"^-- name: (\w+)\s*$", flags=re.MULTILINE)


def load(path: Path) -> dict[str, str]:
    """The named statements of a .sql file, without their trailing semicolons."""
    parts = NAME.split(path.read_text(encoding="utf-8"))
    # parts: [preamble, name, body, name, body, ...]
    return {
        name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


_SQL = load(Path(__file__).with_suffix(".sql"))

STORED_READINGS = _SQL["stored_readings"]
OLDER_METER_HISTORY = _SQL["older_meter_history"]
OLDER_VEHICLE_HISTORY = _SQL["older_vehicle_history"]
ROLL_UP_AGAIN = _SQL["roll_up_again"]
ROLLUPS_BEHIND = _SQL["rollups_behind"]
PARTITION_SIZES = _SQL["partition_sizes"]
METER_READINGS_COUNT = _SQL["meter_readings_count"]
VEHICLE_READINGS_COUNT = _SQL["vehicle_readings_count"]
FLEET_METER_HISTORY = _SQL["fleet_meter_history"]
FLEET_VEHICLE_HISTORY = _SQL["fleet_vehicle_history"]
FLEET_VEHICLE_STATE = _SQL["fleet_vehicle_state"]
FLEET_ASSIGNMENTS = _SQL["fleet_assignments"]
