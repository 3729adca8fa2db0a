"""The default transport: kafka-python behind `worker.transport`'s Protocols. No I/O at import or
in our constructors; `connect_consumer` is the explicit, retried step that connects."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTP
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    MessageSizeTooLargeError,
    RebalanceInProgressError,
)
from kafka.structs import OffsetAndMetadata

from worker.settings import KafkaSettings
from worker.transport import (
    CommitRejected,
    ConsumedRecord,
    Delivery,
    RebalanceListener,
    RecordTooLarge,
    TopicPartition,
    TransportError,
)

log = logging.getLogger(__name__)
_REJECTED = (CommitFailedError, IllegalGenerationError, RebalanceInProgressError)
_FORCED_CLOSE_S = 0.2  # after force_close: time for the sender thread to fail its pending records


def client_config(s: KafkaSettings) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "bootstrap_servers": [b.strip() for b in s.bootstrap_servers.split(",") if b.strip()],
        "client_id": s.client_id,
        "security_protocol": s.security_protocol,
        "bootstrap_timeout_ms": int(s.bootstrap_timeout_s * 1000),
        "reconnect_backoff_max_ms": int(s.retry_backoff_max_s * 1000),
    }
    cfg.update(s.auth_options("sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_cafile"))
    return cfg


def _ours(tp: Any) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


def _theirs(tp: TopicPartition) -> KafkaTP:
    return KafkaTP(tp.topic, tp.partition)


class _Listener(ConsumerRebalanceListener):
    """kafka-python calls this on its IO thread: translate and hand over, nothing else."""

    def __init__(self, target: RebalanceListener, joined: Callable[[], None] = lambda: None) -> None:
        self.target, self.joined = target, joined

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            self.target.on_revoked({_ours(tp) for tp in revoked})

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.joined()
        self.target.on_assigned({_ours(tp) for tp in assigned})

    def on_partitions_lost(self, lost: Any) -> None:
        if lost:
            self.target.on_lost({_ours(tp) for tp in lost})


class KafkaPythonConsumer:
    """`worker.transport.Consumer` over a kafka-python `KafkaConsumer`."""

    def __init__(self, consumer: KafkaConsumer, s: KafkaSettings, now: Any = time.monotonic) -> None:
        self._c, self.settings, self.now = consumer, s, now
        self._connected, self._checked_at = True, -1.0
        self._joined_at = -math.inf  # heartbeats restart one interval after each join

    def _joined(self) -> None:
        self._joined_at = self.now()

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._c.subscribe(list(topics), listener=_Listener(listener, self._joined))

    def poll(self, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        try:
            polled = self._c.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise TransportError(f"poll: {type(exc).__name__}: {exc}") from exc
        return [
            ConsumedRecord(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
            for msgs in polled.values()
            for m in msgs
        ]

    def assignment(self) -> set[TopicPartition]:
        return {_ours(tp) for tp in self._c.assignment()}

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        self._c.pause(*(_theirs(tp) for tp in partitions))

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        self._c.resume(*(_theirs(tp) for tp in partitions))

    def paused(self) -> set[TopicPartition]:
        return {_ours(tp) for tp in self._c.paused()}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._c.seek(_theirs(partition), offset)

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        try:
            self._c.commit(
                {_theirs(tp): OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()},
                timeout_ms=int(timeout_s * 1000),
            )
        except _REJECTED as exc:
            raise CommitRejected(f"{type(exc).__name__}: {exc}") from exc
        except KafkaError as exc:
            raise TransportError(f"commit: {type(exc).__name__}: {exc}") from exc

    def committed(self, partitions: Collection[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        out: dict[TopicPartition, int | None] = {}
        try:
            for tp in partitions:
                # Always bounded: committed() without a timeout can block forever.
                out[tp] = self._c.committed(_theirs(tp), timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise TransportError(f"committed: {type(exc).__name__}: {exc}") from exc
        return out

    def highwater(self, partition: TopicPartition) -> int | None:
        try:
            hw = self._c.highwater(_theirs(partition))
        except KafkaError:  # IllegalStateError: not assigned (any more)
            return None
        return hw if isinstance(hw, int) else None

    def connected(self) -> bool:
        # kafka-python's poll does not raise while every broker is unreachable; the coordinator's
        # heartbeat age does tell. A heartbeat goes out every interval once the previous one is
        # answered, so one sent two intervals ago and still unanswered means a silent broker. The
        # session timeout was too late a sign: while a fetch hangs on a silent broker, kafka-python
        # busy-waits for the whole of every poll (measured 0.5-1 CPU-s per second of outage), so the
        # loop must stop polling back to back (it backs off while this is False) within seconds.
        # metrics() builds a dict of everything: look at most every half interval.
        s = self.settings
        if self.now() - self._checked_at >= min(1.0, s.heartbeat_interval_ms / 2000):
            self._checked_at = self.now()
            stats = (self._c.metrics() or {}).get("consumer-coordinator-metrics", {})
            ago = stats.get("last-heartbeat-seconds-ago")
            if ago is not None:
                ago = min(ago, self.now() - self._joined_at)  # none sent while (re)joining
            silent_s = min(s.session_timeout_ms, 2 * s.heartbeat_interval_ms) / 1000
            # inf until the first heartbeat (still joining the group after a successful connect)
            self._connected = ago is None or math.isinf(ago) or ago < silent_s
        return self._connected

    def close(self, timeout_s: float) -> None:
        try:
            self._c.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise TransportError(f"close: {exc}") from exc


def connect_consumer(s: KafkaSettings) -> KafkaPythonConsumer:
    """Connects; raises TransportError when the cluster is unreachable (NoBrokersAvailable, timeout)."""
    try:
        consumer = KafkaConsumer(
            **client_config(s),
            group_id=s.group_id,
            enable_auto_commit=False,  # offsets are committed only after the tag events are acknowledged
            auto_offset_reset="earliest",
            max_poll_records=s.max_poll_records,
            max_poll_interval_ms=s.max_poll_interval_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            fetch_max_bytes=s.fetch_max_bytes,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
        )
    except KafkaError as exc:
        raise TransportError(f"connect: {type(exc).__name__}: {exc}") from exc
    return KafkaPythonConsumer(consumer, s)


class Refused:
    """`Delivery` of a record the client refused before queueing it (done, failed)."""

    def __init__(self, exc: BaseException) -> None:
        self.exception: BaseException | None = exc
        self.is_done = True

    def succeeded(self) -> bool:
        return False


class KafkaPublisher:
    """Idempotent producer with acks=all; recreated on demand (a broker that lost the producer id
    rejects every later send from the old client)."""

    def __init__(self, s: KafkaSettings) -> None:
        self.settings = s
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _client(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(
                    **client_config(self.settings),
                    acks="all",
                    linger_ms=self.settings.linger_ms,
                    batch_size=262_144,
                    max_request_size=4 * 1_048_576,
                )
            return self._producer

    def connect(self) -> None:
        try:
            self._client()
        except KafkaError as exc:
            raise TransportError(f"producer: {type(exc).__name__}: {exc}") from exc

    def warm(self, topics: Sequence[str], timeout_s: float) -> None:
        """kafka-python fetches a topic's metadata on the first send to it (bounded by its own
        `max_block_ms`, not `timeout_s`: the worker calls this on a thread of its own)."""
        try:
            producer = self._client()
            for topic in topics:
                producer.partitions_for(topic)
        except Exception as exc:  # best effort (also a client closed meanwhile): the first send connects
            log.info("producer warm-up: %s: %s (the first batch connects instead)", type(exc).__name__, exc)

    def send(self, topic: str, key: bytes | None, value: bytes) -> Delivery:
        try:
            delivery: Delivery = self._client().send(topic, key=key, value=value)
            return delivery
        except MessageSizeTooLargeError as exc:  # this record only: the batch's others still go
            return Refused(RecordTooLarge(f"send: {exc}"))
        except KafkaError as exc:
            raise TransportError(f"send: {type(exc).__name__}: {exc}") from exc

    def flush(self, timeout_s: float) -> bool:
        try:
            self._client().flush(timeout=timeout_s)
        except KafkaError:  # KafkaTimeoutError: not all acknowledged yet
            return False
        return True

    def reset(self) -> None:
        with self._lock:
            old, self._producer = self._producer, None
        if old is not None:
            _discard(old, 0.0)  # its unacknowledged records are sent again on the new client

    def close(self, timeout_s: float) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None and not _discard(producer, timeout_s):
            raise TransportError(f"producer close: records unacknowledged after {timeout_s:.1f} s, dropped")


def _discard(producer: KafkaProducer, timeout_s: float) -> bool:
    """Close within about `timeout_s`; True when everything queued was acknowledged. kafka-python's
    own close() raises when its flush times out and leaves the client running (its __del__ then
    blocks another second in a flush): fail what is left first, then close."""
    try:
        producer.flush(timeout=timeout_s)
        flushed = True
    except KafkaError:  # KafkaTimeoutError: records still unacknowledged
        flushed = False
        producer._sender.force_close()  # fails the pending records (no public API for that)
    try:
        producer.close(timeout=0.0 if flushed else _FORCED_CLOSE_S)
    except KafkaError as exc:
        log.debug("closing the producer: %s", exc)
    return flushed
