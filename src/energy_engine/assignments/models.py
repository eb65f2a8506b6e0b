"""Time-bounded vehicle-to-meter assignments."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from energy_engine.bounds import DeviceId, When


class AssignmentRequest(BaseModel):
    """Assign a vehicle to the meter it charges from, from `validFrom` (default: now) on."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    vehicle_id: DeviceId
    meter_id: DeviceId
    valid_from: When | None = None


class Assignment(BaseModel):
    """A vehicle charging from a meter during [validFrom, validTo); validTo null while open."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    assignment_id: int
    vehicle_id: str
    meter_id: str
    valid_from: datetime
    valid_to: datetime | None
