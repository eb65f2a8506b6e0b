"""POST /v1/assignments and GET /v1/vehicles/{vehicleId}/assignments."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response

from energy_engine.assignments import store
from energy_engine.assignments.models import Assignment, AssignmentRequest
from energy_engine.deps import KnownVehicle, PoolDep, SettingsDep, UniqueKeys
from energy_engine.errors import (
    BODY_REFUSED,
    INVALID,
    UNAVAILABLE,
    UNKNOWN_DEVICE,
    ApiError,
    ErrorBody,
    ErrorItem,
)

router = APIRouter(tags=["assignments"], responses={**INVALID, **UNAVAILABLE})


@router.post(
    "/v1/assignments",
    status_code=201,
    dependencies=[UniqueKeys],
    responses={
        200: {"model": Assignment, "description": "Already assigned; nothing changed"},
        409: {"model": ErrorBody, "description": "validFrom precedes an existing boundary"},
        **BODY_REFUSED,
    },
)
async def create_assignment(
    body: AssignmentRequest, response: Response, pool: PoolDep, settings: SettingsDep
) -> Assignment:
    """Assign a vehicle to a meter, closing the vehicle's and the meter's open assignments."""
    valid_from = body.valid_from
    if valid_from and valid_from > datetime.now(UTC) + settings.max_future_skew:
        raise ApiError(
            422,
            "invalid_request",
            "validFrom lies in the future",
            [ErrorItem(field="validFrom", reason="more than the allowed clock skew ahead")],
        )
    async with pool.acquire() as conn:
        try:
            row, created = await store.assign(conn, body.vehicle_id, body.meter_id, valid_from)
        except store.Conflict as exc:
            raise ApiError(
                409,
                "assignment_conflict",
                f"validFrom must not precede {exc.boundary.isoformat()}, where the vehicle's or "
                "the meter's assignment history already has a boundary",
                [ErrorItem(field="validFrom", reason="overlaps an existing assignment")],
            ) from None
    if not created:
        response.status_code = 200
    return Assignment.model_validate(dict(row))


@router.get("/v1/vehicles/{vehicleId}/assignments", responses=UNKNOWN_DEVICE)
async def list_assignments(vehicle_id: KnownVehicle, pool: PoolDep) -> list[Assignment]:
    """A vehicle's assignment history, oldest first."""
    async with pool.acquire() as conn:
        rows = await store.vehicle_assignments(conn, vehicle_id)
    return [Assignment.model_validate(dict(r)) for r in rows]
