"""Time as a dependency: the loop and its steps read `now()` and wait through `wait(event, s)`, so
unit tests drive a fake clock (`worker.testing.FakeClock`) instead of sleeping."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Wait until `event` is set or `timeout_s` passed; True if it is set."""


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        return event.wait(max(0.0, timeout_s))


@dataclass
class Abort:
    """Shutdown's signal to the batch thread: set at once, or after `deadline` (clock time).
    Every wait in publishing checks it, so a stalled broker cannot hold the drain past its budget."""

    clock: Clock
    event: threading.Event = field(default_factory=threading.Event)
    deadline: float = math.inf
    requested_at: float | None = None  # clock time of the stop signal: the drain budget counts from it

    def set(self) -> None:
        self.event.set()

    def expired(self) -> bool:
        return self.event.is_set() or self.clock.now() >= self.deadline

    def remaining(self) -> float:
        return 0.0 if self.event.is_set() else max(0.0, self.deadline - self.clock.now())

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to `timeout_s` (never past the deadline); True when aborted."""
        self.clock.wait(self.event, min(timeout_s, self.remaining()))
        return self.expired()
