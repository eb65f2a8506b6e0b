"""The simulated fleet's physics, checked on the readings it produces."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from energy_engine.simulate.fleet import MINUTE, Fleet, FleetConfig, Plug, Reading, State

START = datetime(2026, 11, 1, 6, 0, 30, tzinfo=UTC)
# Short trips and stops and a plug-in at every stop: many sessions in a few simulated hours.
BUSY = FleetConfig(
    meters=0,
    vehicles=0,
    trip_minutes=(5, 30),
    stop_minutes=(20, 90),
    charge_below_soc=(100.0, 100.0),
    initial_soc=(10.0, 60.0),
)
ROUNDING = 1e-4  # registers are reported to 0.1 Wh
ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass
class Run:
    """What a fleet reported minute by minute, and who charged from whom in between."""

    meters: dict[str, list[Reading]] = field(default_factory=dict)
    vehicles: dict[str, list[Reading]] = field(default_factory=dict)
    plugs: list[tuple[int, Plug]] = field(default_factory=list)
    # charging[t]: vehicle id -> meter id for the vehicles charging during [t, t + 1 min)
    charging: list[dict[str, str]] = field(default_factory=list)


def simulate(config: FleetConfig, minutes: int = 360) -> tuple[Fleet, Run]:
    fleet = Fleet(config, START)
    run = Run()
    for t in range(minutes):
        minute = fleet.step()
        for reading in minute.readings:
            if "meterId" in reading:
                run.meters.setdefault(str(reading["meterId"]), []).append(reading)
            else:
                run.vehicles.setdefault(str(reading["vehicleId"]), []).append(reading)
        run.plugs += [(t, plug) for plug in minute.plugs]
        run.charging.append(
            {
                v.vehicle_id: fleet.chargers[v.charger].meter_id
                for v in fleet.vehicles
                if v.state is State.PLUGGED and v.charger is not None
            }
        )
    return fleet, run


def deltas(readings: list[Reading], key: str) -> list[float]:
    values = [float(r[key]) for r in readings]
    return [b - a for a, b in pairwise(values)]


@pytest.fixture(scope="module")
def busy() -> tuple[Fleet, Run]:
    return simulate(replace(BUSY, meters=8, vehicles=10, seed=7, faulty_share=0.25))


def test_every_device_reports_every_minute_in_the_api_shape(busy: tuple[Fleet, Run]) -> None:
    _, run = busy
    assert len(run.meters) == 8 and len(run.vehicles) == 10
    for readings in [*run.meters.values(), *run.vehicles.values()]:
        assert len(readings) == 360
        stamps = [datetime.fromisoformat(str(r["timestamp"])) for r in readings]
        assert stamps[0] == START.replace(second=0)
        assert all(b - a == MINUTE for a, b in pairwise(stamps))
        assert all(str(r["timestamp"]).endswith(":00Z") for r in readings)
    for readings in run.meters.values():
        assert all(
            r.keys() == {"meterId", "kwhConsumedAc", "voltage", "timestamp"} for r in readings
        )
        assert all(ID.match(str(r["meterId"])) for r in readings)
        assert all(200 < float(r["voltage"]) < 260 for r in readings)
    for readings in run.vehicles.values():
        keys = {"vehicleId", "soc", "kwhDeliveredDc", "batteryTemp", "timestamp"}
        assert all(r.keys() == keys for r in readings)
        assert all(ID.match(str(r["vehicleId"])) for r in readings)


def test_registers_never_decrease_and_soc_stays_in_range(busy: tuple[Fleet, Run]) -> None:
    _, run = busy
    for readings in run.meters.values():
        assert min(deltas(readings, "kwhConsumedAc")) >= 0
    for readings in run.vehicles.values():
        assert min(deltas(readings, "kwhDeliveredDc")) >= 0
        assert all(0 <= float(r["soc"]) <= 100 for r in readings)
        assert all(-40 <= float(r["batteryTemp"]) <= 100 for r in readings)


def test_dc_and_soc_grow_only_while_charging(busy: tuple[Fleet, Run]) -> None:
    _, run = busy
    for vehicle_id, readings in run.vehicles.items():
        dc, soc = deltas(readings, "kwhDeliveredDc"), deltas(readings, "soc")
        for t in range(len(dc)):
            if vehicle_id not in run.charging[t]:
                assert dc[t] == 0, (vehicle_id, t)
                assert soc[t] <= 0, (vehicle_id, t)
    charged = [sum(deltas(r, "kwhDeliveredDc")) for r in run.vehicles.values()]
    assert all(kwh > 1 for kwh in charged)  # every vehicle charged in six busy hours


def test_ac_covers_dc_and_meters_draw_only_for_a_vehicle(busy: tuple[Fleet, Run]) -> None:
    _, run = busy
    ac = {meter_id: deltas(readings, "kwhConsumedAc") for meter_id, readings in run.meters.items()}
    dc = {v: deltas(readings, "kwhDeliveredDc") for v, readings in run.vehicles.items()}
    for t, sessions in enumerate(run.charging[:-1]):
        assert len(set(sessions.values())) == len(sessions)  # one vehicle per charger
        for vehicle_id, meter_id in sessions.items():
            assert ac[meter_id][t] >= dc[vehicle_id][t] - ROUNDING
        for meter_id, steps in ac.items():
            if meter_id not in sessions.values():
                assert steps[t] == 0, (meter_id, t)


def test_efficiency_recovered_from_the_registers(busy: tuple[Fleet, Run]) -> None:
    fleet, run = busy
    ac = {meter_id: deltas(readings, "kwhConsumedAc") for meter_id, readings in run.meters.items()}
    dc = {v: deltas(readings, "kwhDeliveredDc") for v, readings in run.vehicles.items()}
    delivered = dict.fromkeys(ac, 0.0)
    for t, sessions in enumerate(run.charging[:-1]):
        for vehicle_id, meter_id in sessions.items():
            delivered[meter_id] += dc[vehicle_id][t]
    for charger in fleet.chargers:
        drawn = sum(ac[charger.meter_id])
        assert drawn > 1, charger.meter_id
        assert delivered[charger.meter_id] / drawn == pytest.approx(charger.efficiency, abs=2e-3)


def test_a_share_of_the_chargers_is_faulty() -> None:
    for meters, share, faulty in [(8, 0.25, 2), (20, 0.05, 1), (10, 0.0, 0), (3, 1.0, 3)]:
        fleet = Fleet(FleetConfig(meters=meters, vehicles=0, faulty_share=share), START)
        efficiencies = [c.efficiency for c in fleet.chargers]
        assert sum(0.68 <= e <= 0.72 for e in efficiencies) == faulty
        assert sum(0.90 <= e <= 0.95 for e in efficiencies) == meters - faulty


def test_plug_ins_are_assignments_at_the_minute(busy: tuple[Fleet, Run]) -> None:
    _, run = busy
    assert len(run.plugs) >= 10
    for t, plug in run.plugs:
        assert plug.keys() == {"vehicleId", "meterId", "validFrom"}
        assert plug["validFrom"] == run.vehicles[plug["vehicleId"]][t]["timestamp"]
        assert run.charging[t][plug["vehicleId"]] == plug["meterId"]
        if t:
            # Nobody charged from the charger in the minute before: the energy read at t
            # belongs to the new assignment, and none of it was someone else's.
            readings = run.meters[plug["meterId"]]
            assert readings[t]["kwhConsumedAc"] == readings[t - 1]["kwhConsumedAc"]


def test_a_vehicle_is_assigned_again_only_when_it_changes_charger() -> None:
    config = replace(BUSY, meters=4, vehicles=4, seed=3, roam_share=0.0)
    _, run = simulate(config, minutes=600)
    # On its own bay and nobody else's, each vehicle is assigned once and stays assigned.
    assert sorted(p["vehicleId"] for _, p in run.plugs) == sorted(run.vehicles)
    assert all(p["meterId"][-5:] == p["vehicleId"][-5:] for _, p in run.plugs)
    sessions = sum(
        1
        for t in range(1, 600)
        for v in run.vehicles
        if v in run.charging[t] and v not in run.charging[t - 1]
    )
    assert sessions > len(run.vehicles)


def test_more_vehicles_than_chargers_wait_and_share() -> None:
    fleet, run = simulate(replace(BUSY, meters=2, vehicles=6, seed=1), minutes=480)
    assert all(len(sessions) <= 2 for sessions in run.charging)
    assert {p["meterId"] for _, p in run.plugs} == {c.meter_id for c in fleet.chargers}
    assert len({p["vehicleId"] for _, p in run.plugs}) >= 4


def test_battery_warms_while_charging_and_cools_after() -> None:
    _, run = simulate(replace(BUSY, meters=1, vehicles=1, seed=5), minutes=240)
    readings = run.vehicles["vehicle-00001"]
    temps = [float(r["batteryTemp"]) for r in readings]
    charging = [t for t, kwh in enumerate(deltas(readings, "kwhDeliveredDc")) if kwh > 0]
    assert charging
    assert sum(temps[t + 1] > temps[t] for t in charging) > len(charging) / 2
    peak = temps.index(max(temps))
    assert max(temps) > 22  # on its way towards 30-40 °C from a cool morning
    assert min(temps[peak:]) < max(temps) - 1


def test_the_same_seed_gives_the_same_fleet() -> None:
    def minutes(seed: int) -> list[tuple[list[Reading], list[Plug]]]:
        fleet = Fleet(replace(BUSY, meters=5, vehicles=7, seed=seed), START)
        return [(m.readings, m.plugs) for m in (fleet.step() for _ in range(120))]

    assert minutes(11) == minutes(11)
    assert minutes(11) != minutes(12)


def test_start_is_floored_to_the_minute() -> None:
    fleet = Fleet(FleetConfig(meters=1, vehicles=1), START + timedelta(seconds=20))
    assert fleet.now == START.replace(second=0)
    assert fleet.step().at == START.replace(second=0)
    assert fleet.now == START.replace(second=0) + MINUTE


@pytest.mark.parametrize(
    "bad",
    [
        {"meters": -1},
        {"faulty_share": 1.5},
        {"roam_share": -0.1},
        {"faulty_efficiency": (0.7, 1.2)},
        {"trip_minutes": (10, 5)},
        {"charge_to_soc": (80.0, 101.0)},
    ],
)
def test_config_rejects_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FleetConfig(**{"meters": 1, "vehicles": 1, **bad})  # type: ignore[arg-type]
