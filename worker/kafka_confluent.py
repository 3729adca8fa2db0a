"""The fast transport: librdkafka (`confluent-kafka`) behind `worker.transport`'s Protocols.

Selected with `TAGGER_KAFKA__CLIENT=confluent`. Same delivery contract as `worker.kafka_io`:
auto-commit off and offsets committed explicitly (after the loop saw the deliveries), idempotent
producer with acks=all, pause/resume, rebalance callbacks, SASL/TLS from the same settings.

How librdkafka differs from kafka-python, and what this module does about it:
- Callbacks (rebalance, delivery reports, errors, statistics, logs) run only inside `consume()`,
  `poll()` or `flush()`, on the calling thread. Rebalance callbacks therefore arrive on the poll
  thread; delivery reports on the batch thread, inside `flush`.
- librdkafka's own logs go to our logger (its `logger` setting) instead of stderr.
- `Consumer.commit(asynchronous=False)` and `close()` have no timeout: they run on a helper thread
  and are abandoned (reported as `TransportError`) when the caller's budget is spent.
- `Producer.flush` is sliced so that an abort event (shutdown out of budget) cuts it short.
- `pause()` would drop librdkafka's prefetched records: the consumer holds records of paused
  partitions instead (see `ConfluentConsumer`).
- A fatal producer error makes the client unusable: every later send fails until `reset()`
  builds a new one. (After a Tansu restart the error is not even fatal: records time out, and
  `reset()` is again the cure; README "librdkafka vs Tansu".)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka import TopicPartition as RdTP

from worker.settings import KafkaSettings
from worker.transport import (
    CommitRejected,
    ConsumedRecord,
    Delivery,
    RebalanceListener,
    TopicPartition,
    TransportError,
)

log = logging.getLogger(__name__)
# librdkafka's own log lines (broker disconnects, protocol errors) land here.
rdkafka_log = logging.getLogger("worker.kafka_confluent.librdkafka")

T = TypeVar("T")

# Commit errors that mean "the group moved on": the partitions' next owner re-reads the records.
_REJECTED = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._STATE,  # commit while not (or no longer) a member of a group generation
}
# Per-message consumer events that say nothing about the data (end of partition).
_BENIGN = {KafkaError._PARTITION_EOF}
_NO_TIMESTAMP = 0  # confluent_kafka.TIMESTAMP_NOT_AVAILABLE
_FLUSH_SLICE_S = 0.05
# Our logger's level as librdkafka's syslog level: it does not format lines we would drop.
_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _syslog_level(logger: logging.Logger) -> int:
    level = logger.getEffectiveLevel()
    return next((v for k, v in sorted(_SYSLOG.items()) if level <= k), 2)


def common_config(s: KafkaSettings) -> dict[str, Any]:
    """librdkafka properties shared by consumer and producer, from the same fields kafka-python uses."""
    cfg: dict[str, Any] = {
        "bootstrap.servers": ",".join(b.strip() for b in s.bootstrap_servers.split(",") if b.strip()),
        "client.id": s.client_id,
        "security.protocol": s.security_protocol.lower(),
        # librdkafka's ranges: setup timeout >= 1 s, backoff <= 1 h.
        "socket.connection.setup.timeout.ms": max(1000, int(s.bootstrap_timeout_s * 1000)),
        "reconnect.backoff.max.ms": min(3_600_000, int(s.retry_backoff_max_s * 1000)),
        # TCP_NODELAY, as kafka-python and the Java client set it (librdkafka leaves Nagle on).
        "socket.nagle.disable": True,
        "logger": rdkafka_log,
        "log_level": _syslog_level(rdkafka_log),
    }
    cfg.update(s.auth_options("sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.location"))
    return cfg


def consumer_config(s: KafkaSettings) -> dict[str, Any]:
    return {
        **common_config(s),
        "group.id": s.group_id,
        # Offsets are committed explicitly, only after the batch's tag events are acknowledged.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": s.session_timeout_ms,
        "heartbeat.interval.ms": s.heartbeat_interval_ms,
        "max.poll.interval.ms": s.max_poll_interval_ms,
        "fetch.max.bytes": s.fetch_max_bytes,
        "fetch.wait.max.ms": s.fetch_max_wait_ms,
        "enable.partition.eof": False,
        # Topics exist before we touch them (created by deployment): a typo must not create one.
        # (Tansu honours this for librdkafka's requests, unlike kafka-python's; see the README.)
        "allow.auto.create.topics": False,
        # Broker states arrive with the statistics; they tell `connected()` the truth.
        "statistics.interval.ms": 1000,
    }


def producer_config(s: KafkaSettings) -> dict[str, Any]:
    return {
        **common_config(s),
        "enable.idempotence": True,  # implies acks=all, bounded in-flight, no reordering on retry
        "acks": "all",
        "linger.ms": s.linger_ms,
        "message.max.bytes": 4 * 1_048_576,
        # librdkafka fails a record itself after this long; the publish loop then retries it.
        "message.timeout.ms": int(s.produce_timeout_s * 1000),
        "queue.buffering.max.messages": 1_000_000,
    }


def _ours(tp: RdTP) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


def _theirs(tp: TopicPartition, offset: int | None = None) -> RdTP:
    return RdTP(tp.topic, tp.partition) if offset is None else RdTP(tp.topic, tp.partition, offset)


def _describe(err: KafkaError) -> str:
    return f"{err.name()}: {err.str()}"


def _records(messages: list[Message]) -> list[ConsumedRecord]:
    out: list[ConsumedRecord] = []
    append = out.append
    for m in messages:
        err = m.error()
        if err is not None:
            if err.code() not in _BENIGN:
                # e.g. a topic that does not exist: librdkafka keeps retrying by itself.
                log.warning("kafka consumer %s[%s]: %s", m.topic(), m.partition(), _describe(err))
            continue
        kind, ts = m.timestamp()
        # A message without an error always has its topic, partition and offset.
        append(
            ConsumedRecord(
                cast(str, m.topic()),
                cast(int, m.partition()),
                cast(int, m.offset()),
                m.key(),
                m.value(),
                ts if kind != _NO_TIMESTAMP else None,
            )
        )
    return out


class _Helper:
    """Runs librdkafka calls that have no timeout of their own on one thread, waiting at most a
    budget. An abandoned call finishes (or hangs) in the background; the caller moves on. One
    thread: a late commit never lands after a newer one."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def run(self, what: str, fn: Callable[[], T], timeout_s: float) -> T:
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            raise TransportError(f"{what}: no answer within {timeout_s:.1f} s") from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ConfluentConsumer:
    """`worker.transport.Consumer` over a librdkafka `Consumer` (eager range/roundrobin rebalancing,
    like kafka-python's default).

    Pausing is two-level. librdkafka's `pause()` throws away the partition's prefetched records
    and `resume()` fetches them again: measured here, a poll loop that pauses and resumes between
    polls drops from ~40,000 to ~700 records/s. So `pause()` only stops *delivery*: records of a
    paused partition that still arrive are held here, in order, and the partition is paused in
    librdkafka only once `max_poll_records` of them are held (memory stays bounded). `resume()`
    hands the held records out first, then librdkafka's, which continue after them.
    """

    def __init__(self, s: KafkaSettings) -> None:
        self.settings = s
        self._listener: RebalanceListener | None = None
        # librdkafka's assignment() is a round trip to its main thread (~0.8 ms measured, and the
        # loop asks several times per poll); it changes only in the rebalance callbacks.
        self._assignment: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()  # as the loop asked (kept through a rebalance)
        self._held: dict[TopicPartition, list[ConsumedRecord]] = {}  # fetched while paused, in order
        self._hold_max = s.max_poll_records
        self._flagged: set[TopicPartition] = set()  # paused in librdkafka too, see _on_assign
        self._kept: set[TopicPartition] = set()
        self._brokers_up = True
        self._fatal: KafkaError | None = None
        self._helper = _Helper("rdkafka-consumer")
        self._c = Consumer({**consumer_config(s), "error_cb": self._on_error, "stats_cb": self._on_stats})

    # -- callbacks: all run inside consume() on the poll thread, or inside close() -------------
    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._brokers_up = False
        log.warning("kafka consumer: %s", _describe(err))

    def _on_stats(self, raw: str) -> None:
        brokers = json.loads(raw).get("brokers", {}).values()
        # Learned brokers have node ids >= 0; the bootstrap entry (-1) says nothing about the cluster.
        self._brokers_up = any(b.get("state") == "UP" for b in brokers if b.get("nodeid", -1) >= 0)

    # librdkafka keeps a partition's pause flag, and the fetch position saved when it was paused,
    # on its partition object across rebalances: a partition paused, revoked and assigned again
    # comes back paused, and resuming it then fetches from the old saved position, not from the
    # committed offset (measured: records skipped). So no librdkafka pause outlives an assignment:
    # it is lifted while the partition is still ours (the callbacks run before librdkafka
    # unassigns). What the loop paused stays paused here for partitions kept through the
    # rebalance, as with kafka-python; partitions that are new to us start unpaused.
    def _on_assign(self, _c: Consumer, partitions: list[RdTP]) -> None:
        assigned = {_ours(tp) for tp in partitions}
        self._assignment |= assigned
        self._paused -= assigned - self._kept
        self._kept = set()
        if self._listener is not None:
            self._listener.on_assigned(assigned)

    def _on_revoke(self, c: Consumer, partitions: list[RdTP]) -> None:
        revoked = {_ours(tp) for tp in partitions}
        self._kept = revoked  # eager rebalancing: whatever comes back in the next assign was kept
        self._assignment -= revoked
        self._release_partitions(c, revoked)
        if revoked and self._listener is not None:
            self._listener.on_revoked(revoked)

    def _on_lost(self, c: Consumer, partitions: list[RdTP]) -> None:
        lost = {_ours(tp) for tp in partitions}
        self._kept = set()  # not kept: they come back (if at all) unpaused
        self._assignment -= lost
        self._release_partitions(c, lost)
        if lost and self._listener is not None:
            self._listener.on_lost(lost)

    def _release_partitions(self, c: Consumer, partitions: set[TopicPartition]) -> None:
        flagged = partitions & self._flagged
        if flagged:
            c.resume([_theirs(tp) for tp in flagged])
            self._flagged -= flagged
        self._drop_held(partitions)

    def _drop_held(self, partitions: set[TopicPartition]) -> None:
        # Never delivered, never committed: the partition's next owner (or the next assignment,
        # which starts from the committed offset) reads them again.
        for tp in partitions:
            self._held.pop(tp, None)

    # -- the Protocol ------------------------------------------------------------------------
    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._listener = listener
        try:
            self._c.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        except KafkaException as exc:
            raise TransportError(f"subscribe: {exc}") from exc

    def poll(self, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        out: list[ConsumedRecord] = []
        if self._held:
            self._release(out, max_records)
            if out:
                timeout_s = 0.0  # records to hand out already: do not wait for more
        room = max_records - len(out)
        if room <= 0:
            return out
        try:
            messages: list[Message] = self._c.consume(num_messages=room, timeout=timeout_s)
        except (KafkaException, RuntimeError) as exc:  # RuntimeError: consumer closed
            raise TransportError(f"poll: {exc}") from exc
        if self._fatal is not None:
            raise TransportError(f"poll: fatal: {_describe(self._fatal)}")
        records = _records(messages)
        if not (self._paused or self._held):
            out.extend(records)
            return out
        for r in records:
            tp = r.tp
            # Behind held records of its partition (or paused): hold, to keep offset order.
            if tp in self._paused or tp in self._held:
                self._held.setdefault(tp, []).append(r)
            else:
                out.append(r)
        full = [tp for tp in self._paused - self._flagged if len(self._held.get(tp, ())) >= self._hold_max]
        if full:
            self._pause_client(full)
        return out

    def _release(self, out: list[ConsumedRecord], max_records: int) -> None:
        for tp in [tp for tp in self._held if tp not in self._paused]:
            held = self._held[tp]
            take = max_records - len(out)
            if take <= 0:
                return
            out.extend(held[:take])
            if take >= len(held):
                del self._held[tp]
            else:
                self._held[tp] = held[take:]

    def _pause_client(self, partitions: Collection[TopicPartition]) -> None:
        try:
            self._c.pause([_theirs(tp) for tp in partitions])
        except KafkaException as exc:
            raise TransportError(f"pause: {exc}") from exc
        self._flagged |= set(partitions)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        self._paused |= set(partitions)

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        wanted = set(partitions)
        self._paused -= wanted
        flagged = wanted & self._flagged
        if flagged:
            # librdkafka fetches again from its application position: after the held records.
            try:
                self._c.resume([_theirs(tp) for tp in flagged])
            except KafkaException as exc:
                raise TransportError(f"resume: {exc}") from exc
            self._flagged -= flagged

    def paused(self) -> set[TopicPartition]:
        return self._paused & self._assignment

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._held.pop(partition, None)  # superseded: the next records of it start at `offset`
        try:
            self._c.seek(_theirs(partition, offset))
        except KafkaException as exc:
            raise TransportError(f"seek {partition}@{offset}: {exc}") from exc

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        if not offsets:
            return
        wanted = [_theirs(tp, off) for tp, off in offsets.items()]
        try:
            result = self._helper.run("commit", lambda: self._c.commit(offsets=wanted, asynchronous=False), timeout_s)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and err.code() in _REJECTED:
                raise CommitRejected(_describe(err)) from exc
            raise TransportError(f"commit: {exc}") from exc
        except RuntimeError as exc:  # consumer closed
            raise TransportError(f"commit: {exc}") from exc
        failed = [(tp, tp.error) for tp in result or [] if tp.error is not None]
        if failed:
            codes = {err.code() for _, err in failed}
            text = ", ".join(f"{tp.topic}[{tp.partition}]: {_describe(err)}" for tp, err in failed)
            if codes & _REJECTED:
                raise CommitRejected(text)
            raise TransportError(f"commit: {text}")

    def committed(self, partitions: Collection[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        try:
            found = self._c.committed([_theirs(tp) for tp in partitions], timeout=timeout_s)
        except (KafkaException, RuntimeError) as exc:
            raise TransportError(f"committed: {exc}") from exc
        out: dict[TopicPartition, int | None] = {}
        for tp in found:
            if tp.error is not None:
                raise TransportError(f"committed {tp.topic}[{tp.partition}]: {_describe(tp.error)}")
            out[_ours(tp)] = tp.offset if tp.offset >= 0 else None
        return out

    def highwater(self, partition: TopicPartition) -> int | None:
        # cached=True: the high watermark from the last fetch response. A broker query
        # (ListOffsets LATEST) is wrong on Tansu, see the README.
        try:
            _low, high = self._c.get_watermark_offsets(_theirs(partition), cached=True)
        except (KafkaException, RuntimeError):
            return None
        return int(high) if high is not None and high >= 0 else None

    def connected(self) -> bool:
        return self._brokers_up and self._fatal is None

    def close(self, timeout_s: float) -> None:
        try:
            self._helper.run("close", self._c.close, timeout_s)
        except (KafkaException, RuntimeError) as exc:
            raise TransportError(f"close: {exc}") from exc
        finally:
            self._helper.shutdown()


def connect_consumer(s: KafkaSettings) -> ConfluentConsumer:
    """A consumer that has reached the cluster; TransportError when it is unreachable (within
    `bootstrap_timeout_s`), so the loop's connect retry works as with kafka-python."""
    consumer = ConfluentConsumer(s)
    try:
        # A metadata request for no topic in particular (naming one would auto-create it on Tansu).
        consumer._c.list_topics(timeout=s.bootstrap_timeout_s)
    except KafkaException as exc:
        consumer._helper.run("close", consumer._c.close, 5.0)
        consumer._helper.shutdown()
        raise TransportError(f"connect: {exc}") from exc
    return consumer


def _flush(producer: Producer, timeout_s: float, abort: threading.Event) -> bool:
    """Wait for every delivery report, at most `timeout_s`; in slices, so that an abort
    (shutdown out of budget) does not wait for a stalled broker. True when nothing is pending."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if producer.flush(max(0.0, min(_FLUSH_SLICE_S, left))) == 0:
            return True
        if left <= 0 or abort.is_set():
            return False


class DeliveryReport:
    """`worker.transport.Delivery` for one librdkafka record; completed by its delivery callback
    (which runs inside `flush`/`poll` on the thread that calls them)."""

    __slots__ = ("_done", "_exception", "offset")

    def __init__(self) -> None:
        self._done = False
        self._exception: BaseException | None = None
        self.offset: int | None = None

    @property
    def is_done(self) -> bool:
        return self._done

    @property
    def exception(self) -> BaseException | None:
        return self._exception

    def succeeded(self) -> bool:
        return self._done and self._exception is None

    def fail(self, exc: BaseException) -> DeliveryReport:
        self._exception, self._done = exc, True
        return self

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._exception = DeliveryFailed(_describe(err), err.code(), retriable=err.retriable())
        else:
            self.offset = msg.offset()
        self._done = True


class DeliveryFailed(TransportError):
    """librdkafka reported a record as not delivered (or refused to queue it)."""

    def __init__(self, message: str, code: int, retriable: bool = False) -> None:
        super().__init__(message)
        self.code, self.retriable = code, retriable
        self.errno = code  # Kafka's error code (MSG_SIZE_TOO_LARGE = 10): `transport.is_too_large` reads it


class ConfluentPublisher:
    """`worker.transport.Publisher` over a librdkafka idempotent `Producer`.

    `abort` (the shutdown's "out of budget" event) cuts `flush` short. After a fatal error every
    send fails at once until `reset()` replaces the client.
    """

    def __init__(self, s: KafkaSettings, abort: threading.Event | None = None) -> None:
        self.settings = s
        self.abort = abort or threading.Event()
        self._producer: Producer | None = None
        self._fatal: KafkaError | None = None
        self._closed = False
        self._lock = threading.Lock()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
            log.error("kafka producer fatal error (recreating the client on the next retry): %s", _describe(err))
        else:
            log.warning("kafka producer: %s", _describe(err))

    def _client(self) -> Producer:
        with self._lock:
            if self._closed:
                raise DeliveryFailed("publisher is closed", KafkaError._DESTROY)
            if self._producer is None:
                self._fatal = None
                self._producer = Producer({**producer_config(self.settings), "error_cb": self._on_error})
            return self._producer

    def connect(self) -> None:
        self._client()

    def warm(self, topics: Sequence[str], timeout_s: float) -> None:
        """librdkafka learns a topic's partitions (and the idempotent producer its id) on the
        first produce to it: measured on Tansu, a new producer's first flush took ~510 ms, 10 ms
        after this (README: "What each change bought")."""
        try:
            producer = self._client()
            for topic in topics:
                producer.list_topics(topic, timeout=timeout_s)
        except Exception as exc:  # best effort (also a client closed meanwhile): the first send connects
            log.info("producer warm-up: %s: %s (the first batch connects instead)", type(exc).__name__, exc)

    def send(self, topic: str, key: bytes | None, value: bytes) -> Delivery:
        report = DeliveryReport()
        # Per-record path: no lock once the client exists (reading one attribute is atomic).
        producer = self._producer
        if producer is None:
            try:
                producer = self._client()
            except DeliveryFailed as exc:
                return report.fail(exc)
        if self._fatal is not None:
            return report.fail(DeliveryFailed(f"producer unusable: {_describe(self._fatal)}", self._fatal.code()))
        deadline = None
        while True:
            try:
                # Positional (topic, value, key, partition -1 = partitioner, on_delivery): measurably
                # cheaper than keyword parsing on this per-record path.
                producer.produce(topic, value, key, -1, report)
                return report
            except BufferError:
                # The local queue is full: serve delivery reports until there is room, bounded.
                deadline = deadline or time.monotonic() + self.settings.produce_timeout_s
                if time.monotonic() >= deadline or self.abort.is_set():
                    raise TransportError("send: producer queue full") from None
                producer.poll(_FLUSH_SLICE_S)
            except KafkaException as exc:  # refused before queueing, e.g. MSG_SIZE_TOO_LARGE
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                code = err.code() if err is not None else KafkaError.UNKNOWN
                return report.fail(DeliveryFailed(f"send: {exc}", code))
            except RuntimeError as exc:  # the client was closed under us
                return report.fail(DeliveryFailed(f"send: {exc}", KafkaError._DESTROY))

    def flush(self, timeout_s: float) -> bool:
        with self._lock:
            producer = self._producer
        return True if producer is None else _flush(producer, timeout_s, self.abort)

    def _discard(self, producer: Producer, timeout_s: float) -> None:
        """Deliver what is queued within `timeout_s`, fail the rest (reports say _PURGE_*), destroy."""
        if not _flush(producer, timeout_s, self.abort):
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.flush(0)  # serve the purge reports: the loop sees those records as failed
        producer.close()

    def reset(self) -> None:
        with self._lock:
            old, self._producer, self._fatal = self._producer, None, None
        if old is not None:
            self._discard(old, 0.0)

    def close(self, timeout_s: float) -> None:
        with self._lock:
            old, self._producer, self._closed = self._producer, None, True
        if old is not None:
            self._discard(old, timeout_s)
