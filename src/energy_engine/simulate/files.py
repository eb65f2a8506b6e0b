"""Write a simulated fleet to files instead of sending it.

The readings go to NDJSON (gzip when the name ends in .gz), one API object a line, and the
plug-ins to `assignments_path(file)`, one POST /v1/assignments body a line; once the readings
are imported, `read_assignments` gives those bodies back for `send.post_assignments`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import threading
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path

import orjson

from energy_engine.simulate.fleet import Fleet, Plug
from energy_engine.simulate.stats import Observer, Stats

GZIP_LEVEL = 3  # 7 times smaller than the NDJSON, at half the cost of the default level


def assignments_path(path: Path) -> Path:
    """Where the plug-ins of readings file `path` go: sim.ndjson[.gz] -> sim.assignments.ndjson."""
    name = path.name.removesuffix(".gz")
    for suffix in (".ndjson", ".jsonl", ".json"):
        if name.endswith(suffix):
            name = name.removesuffix(suffix)
            break
    return path.with_name(name + ".assignments.ndjson")


@contextlib.contextmanager
def _open_for_writing(path: Path) -> Iterator[io.BufferedIOBase]:
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=GZIP_LEVEL) as compressed:
            yield compressed
    else:
        with path.open("wb") as plain:
            yield plain


def write_files(
    fleet: Fleet,
    end: datetime,
    path: Path,
    *,
    stats: Stats | None = None,
    observe: Observer | None = None,
    stop: threading.Event | None = None,
) -> Stats:
    """Step `fleet` through `end` (or until `stop` is set), writing readings to `path` and
    plug-ins beside it."""
    stats = stats if stats is not None else Stats()
    line = partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE)
    with _open_for_writing(path) as out, assignments_path(path).open("wb") as side:
        while fleet.now <= end and not (stop and stop.is_set()):
            minute = fleet.step()
            out.write(b"".join([line(reading) for reading in minute.readings]))
            side.write(b"".join([line(plug) for plug in minute.plugs]))
            stats.readings += len(minute.readings)
            stats.assignments += len(minute.plugs)
            if observe:
                observe(stats)
    return stats


def read_assignments(path: Path) -> list[Plug]:
    """The assignment bodies of a side file written by `write_files`, in plug-in order."""
    with path.open("rb") as lines:
        return [orjson.loads(line) for line in lines if line.strip()]
