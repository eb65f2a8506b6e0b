"""A fleet of chargers and vehicles, stepped one minute at a time: deterministic, no I/O.

Every meter sits in front of a charger with a rated power and an efficiency; a share of the
chargers are faulty and waste about 30 % of what they draw. Vehicles drive, stop, plug into a
free charger when their battery wants it (their own bay first), charge with a taper above 80 %
SoC, and leave when the stop is over. Every device reports once a minute, as the object the
API takes (camelCase, cumulative registers, whole-minute UTC timestamps).

A step is one minute t: the decisions at t (arrivals, plug-ins, departures), the readings at t,
then the physics of [t, t + 1 min), which the readings at t + 1 show. A plug-in at t is an
assignment valid from t. A charger left at t takes no new vehicle before t + 1 min: the
analytics credit an increment to the assignment its later reading falls in, so the energy of
the last charging minute (read at t) stays with the vehicle that drew it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

Reading = dict[str, str | float]  # one reading as the API takes it
Plug = dict[str, str]  # one assignment as POST /v1/assignments takes it

MINUTE = timedelta(minutes=1)

POWERS_KW = (7.4, 11.0, 22.0, 50.0)  # wallbox, 3-phase, 22 kW AC, DC fast charger
POWER_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
BATTERIES_KWH = (40.0, 52.0, 64.0, 77.0, 82.0, 100.0)
TAPER_FROM_SOC = 80.0  # above this the charging power falls linearly towards full
MIN_TAPER = 0.1
RESERVE_SOC = 10.0  # a trip ends early here; below it a vehicle waits for a charger
VOLTAGE_SAG_PER_KW = 0.05
CHARGING_TEMP_C = (30.0, 40.0)  # what a battery warms towards, from slow to 50 kW charging


class State(Enum):
    """What a vehicle is doing."""

    DRIVING = "driving"
    PARKED = "parked"
    PLUGGED = "plugged"  # charging until `charge_to`, then idle until its stop ends


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """What the fleet looks like; every draw comes from one `random.Random(seed)`."""

    meters: int
    vehicles: int
    seed: int = 0
    faulty_share: float = 0.05  # of the chargers, rounded to a whole number of them
    healthy_efficiency: tuple[float, float] = (0.90, 0.95)
    faulty_efficiency: tuple[float, float] = (0.68, 0.72)
    roam_share: float = 0.1  # chance a vehicle takes another free charger than its own bay
    trip_minutes: tuple[int, int] = (15, 120)
    stop_minutes: tuple[int, int] = (30, 600)
    charge_below_soc: tuple[float, float] = (30.0, 80.0)  # a stop's plug-in threshold
    charge_to_soc: tuple[float, float] = (80.0, 100.0)
    initial_soc: tuple[float, float] = (20.0, 90.0)
    ambient_c: float = 15.0  # daily mean; the day swings ±6 °C around it

    def __post_init__(self) -> None:
        if self.meters < 0 or self.vehicles < 0:
            raise ValueError("meters and vehicles must not be negative")
        for name in ("faulty_share", "roam_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1]")
        for name in ("healthy_efficiency", "faulty_efficiency"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} must be an ordered range within (0, 1]")
        for name in ("trip_minutes", "stop_minutes"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be an ordered range of at least one minute")
        for name in ("charge_below_soc", "charge_to_soc", "initial_soc"):
            low, high = getattr(self, name)
            if not 0 <= low <= high <= 100:
                raise ValueError(f"{name} must be an ordered range within [0, 100]")


@dataclass(slots=True)
class Charger:
    """A charging point and the smart meter in front of it."""

    meter_id: str
    power_kw: float  # rated power into a battery
    efficiency: float  # DC delivered / AC drawn
    nominal_voltage: float
    kwh_ac: float  # the meter's cumulative register
    load_kw: float = 0.0  # AC drawn over the last minute
    assigned: int | None = None  # the vehicle of its latest assignment


@dataclass(slots=True)
class Vehicle:
    """An electric vehicle and its battery."""

    vehicle_id: str
    capacity_kwh: float
    kwh_per_km: float
    home: int | None  # its own bay, a charger index
    soc: float
    kwh_dc: float  # cumulative energy delivered into the battery by chargers
    temp_c: float
    state: State = State.DRIVING
    until: int = 0  # the minute its trip or stop ends
    speed_kmh: float = 40.0
    wants_charge: bool = False
    charge_to: float = 100.0
    charger: int | None = None  # plugged into
    assigned: int | None = None  # the charger of its latest assignment


@dataclass(frozen=True, slots=True)
class Minute:
    """One simulated minute: every device's reading at `at` and the plug-ins at `at`."""

    at: datetime
    readings: list[Reading]  # meters first, then vehicles
    plugs: list[Plug]


def floor_minute(at: datetime) -> datetime:
    """`at` in UTC, floored to the minute."""
    return at.astimezone(UTC).replace(second=0, microsecond=0)


class _FreeChargers:
    """Free charger indexes: constant-time add, remove, membership and a seeded pick."""

    def __init__(self, chargers: Iterable[int]) -> None:
        self._items: list[int] = []
        self._where: dict[int, int] = {}
        for charger in chargers:
            self.add(charger)

    def __contains__(self, charger: int) -> bool:
        return charger in self._where

    def __len__(self) -> int:
        return len(self._items)

    def add(self, charger: int) -> None:
        self._where[charger] = len(self._items)
        self._items.append(charger)

    def remove(self, charger: int) -> None:
        at = self._where.pop(charger)
        last = self._items.pop()
        if last != charger:
            self._items[at] = last
            self._where[last] = at

    def pick(self, rng: random.Random) -> int:
        return rng.choice(self._items)


class Fleet:
    """The simulated fleet from `start` on; `step()` yields one minute after another."""

    def __init__(self, config: FleetConfig, start: datetime) -> None:
        self.config = config
        self.start = floor_minute(start)
        self.minute = 0  # minutes since `start`
        self._rng = random.Random(config.seed)
        self.chargers = self._build_chargers()
        self.vehicles = self._build_vehicles()
        self._free = _FreeChargers(range(len(self.chargers)))
        self._released: list[int] = []  # left this minute; free from the next one

    @property
    def now(self) -> datetime:
        """The minute the next `step()` reports."""
        return self.start + self.minute * MINUTE

    @property
    def devices(self) -> int:
        """Meters plus vehicles: the readings of one minute."""
        return len(self.chargers) + len(self.vehicles)

    def step(self) -> Minute:
        """Decide, report and move on by one minute."""
        at = self.now
        stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        ambient = self._ambient(at)
        for charger in self._released:
            self._free.add(charger)
        self._released.clear()
        readings = [self._meter_reading(charger, stamp) for charger in self.chargers]
        plugs: list[Plug] = []
        for index, vehicle in enumerate(self.vehicles):
            self._decide(index, vehicle, stamp, plugs)
            readings.append(
                {
                    "vehicleId": vehicle.vehicle_id,
                    "soc": round(vehicle.soc, 2),
                    "kwhDeliveredDc": round(vehicle.kwh_dc, 4),
                    "batteryTemp": round(vehicle.temp_c, 1),
                    "timestamp": stamp,
                }
            )
            self._advance(vehicle, ambient)
        self.minute += 1
        return Minute(at, readings, plugs)

    def _build_chargers(self) -> list[Charger]:
        rng, config = self._rng, self.config
        count = config.meters
        faulty = set(rng.sample(range(count), math.floor(count * config.faulty_share + 0.5)))
        return [
            Charger(
                meter_id=f"meter-{i + 1:05d}",
                power_kw=rng.choices(POWERS_KW, POWER_WEIGHTS)[0],
                efficiency=rng.uniform(
                    *(config.faulty_efficiency if i in faulty else config.healthy_efficiency)
                ),
                nominal_voltage=rng.uniform(227.0, 233.0),
                kwh_ac=rng.uniform(1_000.0, 60_000.0),
            )
            for i in range(count)
        ]

    def _build_vehicles(self) -> list[Vehicle]:
        rng, config = self._rng, self.config
        ambient = self._ambient(self.start)
        return [
            Vehicle(
                vehicle_id=f"vehicle-{i + 1:05d}",
                capacity_kwh=rng.choice(BATTERIES_KWH),
                kwh_per_km=rng.uniform(0.14, 0.22),
                home=i % config.meters if config.meters else None,
                soc=rng.uniform(*config.initial_soc),
                kwh_dc=rng.uniform(500.0, 30_000.0),
                temp_c=ambient + rng.uniform(-2.0, 2.0),
                # Trips already under way end at staggered minutes, so arrivals spread out.
                until=rng.randint(0, config.trip_minutes[1]),
                speed_kmh=rng.uniform(25.0, 70.0),
            )
            for i in range(config.vehicles)
        ]

    def _ambient(self, at: datetime) -> float:
        hours = at.hour + at.minute / 60
        return self.config.ambient_c + 6.0 * math.sin(2 * math.pi * (hours - 9) / 24)

    def _meter_reading(self, charger: Charger, stamp: str) -> Reading:
        volts = (
            charger.nominal_voltage
            - VOLTAGE_SAG_PER_KW * charger.load_kw
            + self._rng.gauss(0.0, 0.8)
        )
        charger.load_kw = 0.0  # the vehicle charging from it sets it again for this minute
        return {
            "meterId": charger.meter_id,
            "kwhConsumedAc": round(charger.kwh_ac, 4),
            "voltage": round(volts, 1),
            "timestamp": stamp,
        }

    def _decide(self, index: int, vehicle: Vehicle, stamp: str, plugs: list[Plug]) -> None:
        now = self.minute
        if vehicle.state is State.DRIVING:
            if now >= vehicle.until or vehicle.soc <= RESERVE_SOC:
                self._arrive(vehicle)
        elif now >= vehicle.until:
            if vehicle.state is State.PLUGGED:
                self._unplug(vehicle)
            if vehicle.soc > RESERVE_SOC:
                self._depart(vehicle)
            else:
                vehicle.until = now + 30  # too low to leave: wait longer for a charger
                vehicle.wants_charge = True
        if vehicle.state is State.PARKED and vehicle.wants_charge:
            self._plug(index, vehicle, stamp, plugs)

    def _arrive(self, vehicle: Vehicle) -> None:
        rng, config = self._rng, self.config
        vehicle.state = State.PARKED
        vehicle.until = self.minute + rng.randint(*config.stop_minutes)
        vehicle.charge_to = rng.uniform(*config.charge_to_soc)
        threshold = rng.uniform(*config.charge_below_soc)
        vehicle.wants_charge = vehicle.soc < vehicle.charge_to and (
            vehicle.soc < threshold or vehicle.soc <= RESERVE_SOC
        )

    def _depart(self, vehicle: Vehicle) -> None:
        vehicle.state = State.DRIVING
        vehicle.wants_charge = False
        vehicle.until = self.minute + self._rng.randint(*self.config.trip_minutes)
        vehicle.speed_kmh = self._rng.uniform(25.0, 70.0)

    def _plug(self, index: int, vehicle: Vehicle, stamp: str, plugs: list[Plug]) -> None:
        home, roam = vehicle.home, self.config.roam_share
        if home is not None and home in self._free and (roam == 0 or self._rng.random() >= roam):
            chosen = home
        elif self._free:
            chosen = self._free.pick(self._rng)
        else:
            return  # every charger is taken: try again next minute
        self._free.remove(chosen)
        vehicle.state = State.PLUGGED
        vehicle.charger = chosen
        vehicle.wants_charge = False
        if vehicle.assigned == chosen:
            return  # back on the charger it is still assigned to: nothing to tell the API
        # The API closes both devices' open assignments; mirror that here.
        charger = self.chargers[chosen]
        if vehicle.assigned is not None:
            self.chargers[vehicle.assigned].assigned = None
        if charger.assigned is not None:
            self.vehicles[charger.assigned].assigned = None
        vehicle.assigned, charger.assigned = chosen, index
        plugs.append(
            {"vehicleId": vehicle.vehicle_id, "meterId": charger.meter_id, "validFrom": stamp}
        )

    def _unplug(self, vehicle: Vehicle) -> None:
        assert vehicle.charger is not None
        self._released.append(vehicle.charger)
        vehicle.charger = None
        vehicle.state = State.PARKED

    def _advance(self, vehicle: Vehicle, ambient: float) -> None:
        """The physics of one minute: energy, state of charge and battery temperature."""
        if vehicle.state is State.DRIVING:
            kwh = vehicle.speed_kmh / 60 * vehicle.kwh_per_km * (0.7 + 0.6 * self._rng.random())
            vehicle.soc = max(0.0, vehicle.soc - kwh / vehicle.capacity_kwh * 100)
            target, rate = ambient + 8.0, 0.02
        elif vehicle.state is State.PLUGGED and vehicle.soc < vehicle.charge_to - 1e-6:
            target, rate = self._charge(vehicle), 0.03
        else:
            target, rate = ambient, 0.01
        vehicle.temp_c += (target - vehicle.temp_c) * rate

    def _charge(self, vehicle: Vehicle) -> float:
        """Charge for a minute; the temperature the battery warms towards."""
        assert vehicle.charger is not None
        charger = self.chargers[vehicle.charger]
        taper = 1.0
        if vehicle.soc > TAPER_FROM_SOC:
            taper = max(MIN_TAPER, (100 - vehicle.soc) / (100 - TAPER_FROM_SOC))
        room = (vehicle.charge_to - vehicle.soc) / 100 * vehicle.capacity_kwh
        kwh = min(charger.power_kw * taper / 60, room)
        vehicle.soc = min(vehicle.charge_to, vehicle.soc + kwh / vehicle.capacity_kwh * 100)
        vehicle.kwh_dc += kwh
        charger.kwh_ac += kwh / charger.efficiency
        charger.load_kw = kwh * 60 / charger.efficiency
        low, high = CHARGING_TEMP_C
        return low + (high - low) * min(1.0, charger.power_kw / 50.0)
