"""The worker's heap and Python's cyclic garbage collector.

A started worker holds a few hundred thousand long-lived objects (the model's vocabularies and
lexical channel, the clients, pydantic and prometheus), and its hot path allocates containers for
every event (the parsed record and entry, the event). Collections walked the long-lived objects
again and again: in a cache-hit replay, freezing them cut the poll thread's CPU from 1.92 to
1.06 s (py-spy had put that time on the allocating lines, orjson.loads). `settle` moves everything alive into
the permanent generation (`gc.freeze`), which collections skip; objects there are still freed by
reference counting.

Cycles in the permanent generation are never collected, though, and a hot reload leaves the old
model behind. So a reload marks the heap `unsettled`, and once no batch of the old model is left
in flight the loop settles it again: thaw, collect (the old model's cycles go), freeze.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


class Heap:
    def __init__(self) -> None:
        self.unsettled = False

    def settle(self) -> None:
        """Collect what is garbage now, then freeze what is left (at start, and after a reload)."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.unsettled = False
        log.info(
            "heap settled: %d objects frozen, %d unreachable collected in %.0f ms",
            gc.get_freeze_count(),
            found,
            1000 * (time.perf_counter() - started),
        )

    def reloaded(self) -> None:
        """The model was switched: settle again once the old model's batches are done."""
        self.unsettled = True
