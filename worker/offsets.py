"""Step 5, the offset tracker: which offsets may be committed. Pure (no I/O, no clock).

Every consumed record is outstanding until the batch that carries it is acknowledged. A
partition's committable offset is its first outstanding record (or, with none, the last consumed
+ 1), so batches may finish in any order, cache hits may overtake inference, and a commit never
passes a record that was not acknowledged. A failed batch's records stay outstanding for good.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable

from worker.transport import TopicPartition


class OffsetTracker:
    def __init__(self) -> None:
        self._outstanding: dict[TopicPartition, deque[int]] = {}  # consumed, in offset order
        self._acked: dict[TopicPartition, set[int]] = {}  # acknowledged, not yet at the front
        self._next: dict[TopicPartition, int] = {}  # last consumed + 1
        self._start: dict[TopicPartition, int] = {}  # first consumed: committing it would be no progress
        self._committed: dict[TopicPartition, int] = {}
        self._batches: dict[int, list[tuple[TopicPartition, int]]] = {}
        self._failed: set[int] = set()
        self._next_id = 0

    def seen(self, tp: TopicPartition, offset: int) -> None:
        """A record was consumed: outstanding until its batch is done."""
        self._outstanding.setdefault(tp, deque()).append(offset)
        self._start.setdefault(tp, offset)
        self._next[tp] = offset + 1

    def open(self, records: Iterable[tuple[TopicPartition, int]]) -> int:
        """Register a batch of consumed records; returns its id."""
        self._next_id += 1
        self._batches[self._next_id] = list(records)
        return self._next_id

    def done(self, batch_id: int) -> None:
        for tp, offset in self._batches.pop(batch_id, []):
            if tp not in self._outstanding:
                continue  # the partition was revoked meanwhile
            self._acked.setdefault(tp, set()).add(offset)
            queue, acked = self._outstanding[tp], self._acked[tp]
            while queue and queue[0] in acked:
                acked.discard(queue.popleft())

    def failed(self, batch_id: int) -> None:
        self._batches.pop(batch_id, None)
        self._failed.add(batch_id)  # its records stay outstanding: nothing past them is committed

    @property
    def blocked(self) -> bool:
        return bool(self._failed)

    def committable(self) -> dict[TopicPartition, int]:
        out = {}
        for tp, queue in self._outstanding.items():
            offset = queue[0] if queue else self._next[tp]
            if offset > self._committed.get(tp, self._start[tp]):
                out[tp] = offset
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            self._committed[tp] = max(self._committed.get(tp, 0), off)

    def last_committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    def forget(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Partitions revoked or lost: drop their uncommitted progress, including records of
        batches still in flight. Returns where each must be re-read from if it comes back to this
        member (its last commit, or its first record consumed): dropped work is never skipped."""
        rewind: dict[TopicPartition, int] = {}
        for tp in partitions:
            queue = self._outstanding.pop(tp, None)
            start = self._committed.pop(tp, None)
            if start is None and queue:
                start = queue[0]
            if start is not None:
                rewind[tp] = start
            self._acked.pop(tp, None)
            self._next.pop(tp, None)
            self._start.pop(tp, None)
        return rewind
