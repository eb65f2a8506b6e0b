"""What the engine's long-running processes (`serve`'s workers, `worker`) do once started."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def startup_frozen() -> Iterator[None]:
    """What start-up built (modules, models, routes, pools) out of the cyclic collector's sight
    while the block runs: it lives as long as the process, and every full collection scanned it
    again. Under the open-model load (RESULTS.md row 4) full collections paused the event loop
    for about 50 ms each, ten a minute: the p99 of the requests caught behind them."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()  # a process that goes on (tests building app after app) collects it again
