"""Step 5, the offset tracker: which offsets may be committed. Pure (no I/O, no clock).

Batches are opened in consume order and may finish in any order; a partition's offset is
committable only once every earlier batch is done, so a commit never passes a record that has not
been acknowledged. A failed batch blocks everything after it for good.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from worker.transport import TopicPartition


@dataclass
class _Batch:
    next_offsets: dict[TopicPartition, int]  # per partition: last offset in the batch + 1
    done: bool = False
    failed: bool = False


@dataclass
class OffsetTracker:
    _open: dict[int, _Batch] = field(default_factory=dict)  # insertion order = consume order
    _ready: dict[TopicPartition, int] = field(default_factory=dict)  # acknowledged, not yet committed
    _committed: dict[TopicPartition, int] = field(default_factory=dict)
    _first_seen: dict[TopicPartition, int] = field(default_factory=dict)
    _next_id: int = 0

    def seen(self, tp: TopicPartition, offset: int) -> None:
        """A record was consumed (used to know where to rewind when nothing was committed yet)."""
        self._first_seen.setdefault(tp, offset)

    def open(self, offsets: dict[TopicPartition, int]) -> int:
        """Register a batch (next offsets per partition), in consume order; returns its id."""
        self._next_id += 1
        self._open[self._next_id] = _Batch(dict(offsets))
        return self._next_id

    def done(self, batch_id: int) -> None:
        if batch_id in self._open:
            self._open[batch_id].done = True
            self._advance()

    def failed(self, batch_id: int) -> None:
        if batch_id in self._open:
            self._open[batch_id].failed = True

    @property
    def blocked(self) -> bool:
        return any(b.failed for b in self._open.values())

    @property
    def in_flight(self) -> int:
        return len(self._open)

    def _advance(self) -> None:
        for batch_id in list(self._open):
            batch = self._open[batch_id]
            if not batch.done:
                return  # in consume order: nothing past an unfinished or failed batch
            for tp, off in batch.next_offsets.items():
                self._ready[tp] = max(self._ready.get(tp, 0), off)
            del self._open[batch_id]

    def committable(self) -> dict[TopicPartition, int]:
        return {tp: off for tp, off in self._ready.items() if off > self._committed.get(tp, -1)}

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            self._committed[tp] = max(self._committed.get(tp, 0), off)
            if self._ready.get(tp) == off:
                del self._ready[tp]

    def last_committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    def forget(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Partitions revoked or lost: drop their uncommitted progress, including offsets of batches
        still in flight. Returns where each must be re-read from if it comes back to this member
        (its last commit, or the first record consumed): work dropped here is never skipped."""
        gone = set(partitions)
        rewind: dict[TopicPartition, int] = {}
        for tp in gone:
            start = self._committed.get(tp, self._first_seen.get(tp))
            if start is not None:
                rewind[tp] = start
            self._ready.pop(tp, None)
            self._committed.pop(tp, None)
            self._first_seen.pop(tp, None)
        for batch in self._open.values():
            for tp in gone & batch.next_offsets.keys():
                del batch.next_offsets[tp]
        return rewind
