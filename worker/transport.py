"""The worker's seams to a Kafka client, transport-neutral: our own partition and record types,
our own errors, and two Protocols (`Consumer`, `Publisher`). `worker.kafka_io` implements them with
kafka-python (the default); `worker.testing` has fakes for unit tests of the poll loop. No client
library type crosses these seams.

Threading contract (what the loop relies on):
- Every method is called from the poll thread only, except `Publisher.send/flush`, which the batch
  thread calls (one batch thread at a time).
- `RebalanceListener` callbacks may run on any thread (kafka-python: its IO thread). A listener
  must only record the event and return at once; the loop acts on it on the poll thread. Blocking
  in a callback stalls heartbeats and gets the member evicted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Protocol


class TopicPartition(NamedTuple):
    """A named tuple: hashed and compared in C (every consumed record is tracked by partition)."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(frozen=True)
class ConsumedRecord:
    """One record as fetched: raw bytes, nothing decoded."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None  # producer CreateTime (or broker LogAppendTime); None if unknown

    @cached_property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)  # built once per record (read ~5 times)


class TransportError(Exception):
    """The client or the cluster failed (unreachable, timed out, ...): a fault, retried by the loop."""


class RecordTooLarge(TransportError):
    """The client or the broker refused one record for its size: permanent for that record (sending
    it again can never succeed), unlike every other TransportError."""


# Kafka protocol error codes MESSAGE_TOO_LARGE and RECORD_LIST_TOO_LARGE, carried as `errno` by
# kafka-python's error classes (its broker-side rejections arrive as those) and by librdkafka's
# delivery failures (`kafka_confluent.DeliveryFailed`), for the broker's and the client's own limit.
_TOO_LARGE_CODES = frozenset({10, 18})


def is_too_large(exc: BaseException | None) -> bool:
    return isinstance(exc, RecordTooLarge) or getattr(exc, "errno", None) in _TOO_LARGE_CODES


class CommitRejected(TransportError):
    """The group rebalanced (or this member was evicted): the commit was refused. The records go to
    the partitions' next owner; nothing is lost, duplicates carry the same event ids."""


class RebalanceListener(Protocol):
    """Partition assignment changes. May be called on a client thread: record and return."""

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Partitions now owned (newly added; under eager rebalancing, the whole new assignment)."""

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        """Partitions given up in an orderly rebalance (commits are no longer accepted for them)."""

    def on_lost(self, partitions: set[TopicPartition]) -> None:
        """Partitions taken away without a revoke (session expired, member evicted)."""


class Consumer(Protocol):
    """A group consumer with manual commits. Every call that can block takes a timeout."""

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None: ...

    def poll(self, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        """Records in offset order per partition; [] when none. Raises TransportError."""

    def assignment(self) -> set[TopicPartition]: ...

    def pause(self, partitions: Collection[TopicPartition]) -> None: ...

    def resume(self, partitions: Collection[TopicPartition]) -> None: ...

    def paused(self) -> set[TopicPartition]:
        """What the client has paused (kafka-python keeps this flag across a rebalance for kept partitions)."""

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """The next poll returns records of `partition` from `offset`."""

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        """Commit next-offsets to read. Raises CommitRejected after a rebalance, TransportError otherwise."""

    def committed(self, partitions: Collection[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        """The group's committed next-offsets (None: nothing committed). Raises TransportError."""

    def highwater(self, partition: TopicPartition) -> int | None:
        """Last known end of the log from fetch responses (no network call); None if unknown yet."""

    def connected(self) -> bool:
        """True while the client talks to the cluster (a poll without errors is not enough: a
        client cut off from every broker polls empty lists without raising)."""

    def close(self, timeout_s: float) -> None:
        """Leave the group without committing (the loop commits explicitly before)."""


class Delivery(Protocol):
    """The outcome of one `Publisher.send`, known once `is_done`."""

    @property
    def is_done(self) -> bool: ...

    @property
    def exception(self) -> BaseException | None: ...

    def succeeded(self) -> bool: ...


class Publisher(Protocol):
    """Produce records with acks=all. `flush` waits at most `timeout_s` (so a shutdown can cut a
    stalled broker short by flushing in slices); `reset` replaces a broken client."""

    def warm(self, topics: Sequence[str], timeout_s: float) -> None:
        """Connect and learn the topics' partitions before the first batch needs them (best
        effort, never raises: a failure leaves it to the first send, as without it)."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> Delivery:
        """Queue one record; raises TransportError when it cannot even be queued."""

    def flush(self, timeout_s: float) -> bool:
        """Wait for outstanding deliveries; True when all are done (delivered or failed), False on timeout."""

    def reset(self) -> None: ...

    def close(self, timeout_s: float) -> None: ...
