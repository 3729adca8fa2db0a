"""Rebalance events, recorded on whatever thread the client calls us (kafka-python: its IO
thread, where blocking stalls heartbeats and commits raise) and handed to the poll thread."""

from __future__ import annotations

import threading
from typing import Literal

from worker.transport import TopicPartition

Kind = Literal["assigned", "revoked", "lost"]


class RebalanceEvents:
    """A `worker.transport.RebalanceListener` that only queues; `drain` runs on the poll thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[Kind, frozenset[TopicPartition]]] = []

    def _add(self, kind: Kind, partitions: set[TopicPartition]) -> None:
        with self._lock:
            self._events.append((kind, frozenset(partitions)))

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        self._add("assigned", partitions)

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self._add("revoked", partitions)

    def on_lost(self, partitions: set[TopicPartition]) -> None:
        self._add("lost", partitions)

    def drain(self) -> list[tuple[Kind, frozenset[TopicPartition]]]:
        with self._lock:
            events, self._events = self._events, []
        return events
