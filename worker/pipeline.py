"""The worker's pipeline: consume -> decode -> micro-batch -> (cache, infer, publish) -> commit.

`BatchProcessor` runs one micro-batch (cache lookup, inference of misses, cache write, publishing
tag events and dead letters until acknowledged). `Worker` owns the consumer and the poll loop: it
keeps at most `max_in_flight` batches in a single-thread executor, pauses partitions when full,
and commits a batch's offsets only after the batch's records are acknowledged, in consume order.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from schemas.events import DeadLetter, ProductEvent
from worker.batcher import Batcher
from worker.cache import Cache
from worker.decode import (
    Invalid,
    cache_key,
    content_hash,
    decode_product,
    estimate_tokens,
    event_id,
    model_text,
)
from worker.engine import Tag, TagEngine
from worker.kafka_io import Publisher
from worker.metrics import Metrics
from worker.settings import LimitSettings, WorkerSettings

log = logging.getLogger(__name__)


class PublishAborted(Exception):
    """Shutdown ran out of budget before a batch was acknowledged; its offsets stay uncommitted."""


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    received: float
    product: ProductEvent | None = None
    invalid: Invalid | None = None
    text: str = ""
    chash: str = ""

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass
class BatchOutcome:
    offsets: dict[TopicPartition, int]  # next offset to commit per partition
    tagged: int = 0
    cached: int = 0
    dead: int = 0


@dataclass
class Health:
    """Shared state read by the HTTP probes."""

    kafka_ok: bool = False
    stopping: bool = False
    cache: Cache | None = None
    last_tick: float = field(default_factory=time.monotonic)

    @property
    def ready(self) -> bool:
        return self.kafka_ok and not self.stopping


def to_record(msg: Any, received: float, limits: LimitSettings, max_seq_len: int) -> tuple[Record, int]:
    """Kafka message -> decoded Record and its token estimate (0 for invalid records)."""
    rec = Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value, msg.timestamp, received)
    decoded = decode_product(msg.value, limits)
    if isinstance(decoded, Invalid):
        rec.invalid = decoded
        return rec, 0
    rec.product = decoded
    rec.text = model_text(decoded)
    rec.chash = content_hash(rec.text)
    return rec, estimate_tokens(rec.text, max_seq_len)


def encode_tags(tags: list[Tag]) -> bytes:
    return json.dumps([[t.tag, t.score] for t in tags], separators=(",", ":"), ensure_ascii=False).encode()


def decode_tags(raw: bytes) -> list[Tag] | None:
    try:
        return [Tag(str(t), float(s)) for t, s in json.loads(raw)]
    except (ValueError, TypeError):
        return None  # a corrupt cache entry is a miss


class BatchProcessor:
    def __init__(
        self,
        settings: WorkerSettings,
        engine: TagEngine,
        cache: Cache,
        publisher: Publisher,
        metrics: Metrics,
        health: Health,
        abort: threading.Event,
        wall_clock: Callable[[], float] = time.time,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s, self.engine, self.cache, self.publisher = settings, engine, cache, publisher
        self.metrics, self.health, self.abort, self.wall_clock, self.now = metrics, health, abort, wall_clock, now
        self.model_version = engine.model_version

    def process(self, batch: list[Record]) -> BatchOutcome:
        m, started = self.metrics, self.now()
        for r in batch:
            m.queue_wait.observe(started - r.received)
        m.batch_size.observe(len(batch))
        valid = [r for r in batch if r.product is not None]
        keys = [cache_key(self.s.redis.key_prefix, self.model_version, r.chash) for r in valid]

        t = self.now()
        results: list[list[Tag] | None] = [decode_tags(v) if v is not None else None for v in self.cache.get_many(keys)]
        m.stage.labels("cache_get").observe(self.now() - t)
        cached = [res is not None for res in results]
        misses = [i for i, res in enumerate(results) if res is None]
        m.cache_hits.inc(len(valid) - len(misses))
        m.cache_misses.inc(len(misses))
        if misses:
            t = self.now()
            encoded = self.engine.encode([valid[i].text for i in misses])
            t2 = self.now()
            m.stage.labels("tokenize").observe(t2 - t)
            m.batch_tokens.observe(sum(len(x) for x in encoded))
            tags = self.engine.decode(encoded, self.engine.run(encoded))
            elapsed = self.now() - t2
            m.inference.observe(elapsed)
            m.stage.labels("inference").observe(elapsed)
            t = self.now()
            fresh = {}
            for i, inferred in zip(misses, tags, strict=True):
                results[i] = inferred
                fresh[keys[i]] = encode_tags(inferred)
            self.cache.set_many(fresh)
            m.stage.labels("cache_set").observe(self.now() - t)

        stamp = datetime.fromtimestamp(self.wall_clock(), UTC)
        tagged_at = stamp.isoformat().replace("+00:00", "Z")
        messages: list[tuple[str, bytes | None, bytes, Record]] = []
        for r, ts, hit in zip(valid, results, cached, strict=True):
            assert r.product is not None and ts is not None
            # The TagEvent contract (schemas/events.py), serialised directly: building pydantic
            # models per event was ~10% of the cache-hit path. A test validates these bytes.
            ev = {
                "event_id": event_id(r.product.product_id, r.chash, self.model_version),
                "product_id": r.product.product_id,
                "tags": [{"tag": x.tag, "score": min(1.0, max(0.0, x.score))} for x in ts],
                "model_version": self.model_version,
                "content_hash": r.chash,
                "tagged_at": tagged_at,
                "cached": hit,
                "source_topic": r.topic,
                "source_partition": r.partition,
                "source_offset": r.offset,
            }
            value = json.dumps(ev, ensure_ascii=False, separators=(",", ":")).encode()
            messages.append((self.s.kafka.output_topic, r.product.product_id.encode(), value, r))
        dead = 0
        for r in batch:
            if r.invalid is None:
                continue
            dead += 1
            raw = r.value or b""
            dl = DeadLetter(
                error_kind=r.invalid.reason,
                error_message=r.invalid.message[:2000],
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                timestamp_ms=r.timestamp_ms,
                key_b64=base64.b64encode(r.key).decode() if r.key is not None else None,
                value_b64=base64.b64encode(raw).decode(),
                value_size=len(raw),
                dead_lettered_at=stamp,
            )
            log.info("dead-lettering %s: %s: %s", r.where, r.invalid.reason, r.invalid.message[:200])
            messages.append((self.s.kafka.dlq_topic, r.key, dl.model_dump_json().encode(), r))

        t = self.now()
        self._publish(messages)
        m.stage.labels("produce").observe(self.now() - t)
        acked = self.wall_clock()
        for _, _, _, r in messages:
            if r.product is not None and r.timestamp_ms is not None and r.timestamp_ms > 0:
                m.end_to_end.observe(max(0.0, acked - r.timestamp_ms / 1000))
        for r in batch:
            if r.invalid is not None:
                m.dead_letters.labels(r.invalid.reason).inc()
        m.produced.inc(len(valid))
        offsets: dict[TopicPartition, int] = {}
        for r in batch:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        return BatchOutcome(offsets, tagged=len(valid), cached=sum(cached), dead=dead)

    def _publish(self, messages: list[tuple[str, bytes | None, bytes, Record]]) -> None:
        """Send until every record is acknowledged; retry with backoff; give up only on abort."""
        pending = messages
        backoff = 0.2
        while pending:
            try:
                futures = [(msg, self.publisher.send(msg[0], msg[1], msg[2])) for msg in pending]
                self.publisher.flush(self.s.kafka.produce_timeout_s)
                failed = [msg for msg, f in futures if not f.succeeded()]
                errors = {type(f.exception).__name__ for _, f in futures if f.is_done and f.exception}
            except KafkaError as exc:
                failed, errors = pending, {f"{type(exc).__name__}: {exc}"}
            if not failed:
                self.health.kafka_ok = True
                return
            self.health.kafka_ok = False
            self.metrics.produce_retries.inc()
            log.warning(
                "%d of %d records not acknowledged (%s); retrying in %.1f s",
                len(failed),
                len(pending),
                ", ".join(sorted(errors)),
                backoff,
            )
            if self.abort.wait(backoff):
                raise PublishAborted(f"{len(failed)} records unacknowledged at shutdown")
            backoff = min(backoff * 2, self.s.kafka.retry_backoff_max_s)
            self.publisher.reset()
            pending = failed


class Consumer(Protocol):
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]: ...
    def commit(
        self, offsets: dict[TopicPartition, OffsetAndMetadata] | None = None, timeout_ms: int | None = None
    ) -> None: ...
    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener | None = None) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None: ...
    def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None: ...


class Worker(ConsumerRebalanceListener):
    """The poll loop. Signal handlers only set `stop`; `run` drains and returns an exit code."""

    def __init__(
        self,
        settings: WorkerSettings,
        connect: Callable[[], Consumer],
        processor: BatchProcessor,
        metrics: Metrics,
        health: Health,
        stop: threading.Event,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s, self.connect, self.processor, self.metrics, self.health = settings, connect, processor, metrics, health
        self.stop, self.now = stop, now
        b = settings.batching
        self.batcher: Batcher[Record] = Batcher(b.max_items, b.max_tokens, b.max_wait_ms / 1000, now=now)
        self.limits = settings.limits
        self.max_seq_len = processor.engine.manifest.max_seq_len
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
        self.in_flight: deque[Future[BatchOutcome]] = deque()
        self.pending_commit: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.consumer: Consumer | None = None
        self.failed = False
        self.totals = {"consumed": 0, "tagged": 0, "cached": 0, "dead": 0, "commits": 0}
        self._next_lag = 0.0
        self._next_commit = 0.0

    # -- connection -------------------------------------------------------------------------
    def _connect(self) -> Consumer | None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                consumer = self.connect()
                consumer.subscribe([self.s.kafka.input_topic], listener=self)
                self.health.kafka_ok = True
                log.info("consuming %s as group %s", self.s.kafka.input_topic, self.s.kafka.group_id)
                return consumer
            except KafkaError as exc:
                self.health.kafka_ok = False
                self.health.last_tick = self.now()  # alive and retrying: liveness must not restart us
                log.warning("kafka unreachable (%s); retrying in %.1f s", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.s.kafka.retry_backoff_max_s)
        return None

    # -- rebalance listener (called inside poll, on this thread) -----------------------------
    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            log.info("partitions revoked: %s; finishing in-flight work", sorted(str(tp) for tp in revoked))
            self._finish_all(self.s.shutdown.drain_timeout_s)
        self.paused.clear()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    # -- loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        self.consumer = self._connect()
        if self.consumer is None:
            return 0
        try:
            while not self.stop.is_set() and not self.failed:
                self._reap()
                self._submit_due()
                self._backpressure()
                self._poll()
                self._report_lag()
                self.health.last_tick = self.now()
        finally:
            self.health.stopping = True
            self._shutdown()
        return 1 if self.failed else 0

    def _poll(self) -> None:
        assert self.consumer is not None
        timeout = self.s.kafka.poll_timeout_ms
        if len(self.in_flight) >= self.s.batching.max_in_flight:
            # No room for the next batch: sleep until the oldest batch finishes (or the poll timeout)
            # instead of spinning on poll(0) against ONNX Runtime's threads; then poll for heartbeats.
            wait([self.in_flight[0]], timeout=timeout / 1000)
            timeout = 0
        elif (left := self.batcher.time_left()) is not None:
            timeout = min(timeout, int(left * 1000))
        room = max(1, self.s.batching.max_items * (self.s.batching.max_in_flight + 1) - len(self.batcher))
        t = self.now()
        try:
            polled = self.consumer.poll(timeout_ms=timeout, max_records=min(room, self.s.kafka.max_poll_records))
        except KafkaError as exc:
            log.warning("poll failed: %s", exc)
            self.health.kafka_ok = False
            self.stop.wait(0.5)
            return
        t2 = self.now()
        self.metrics.stage.labels("poll").observe(t2 - t)
        n = 0
        for msgs in polled.values():
            for msg in msgs:
                rec, tokens = to_record(msg, t2, self.limits, self.max_seq_len)
                self.batcher.add(rec, tokens)
                n += 1
        if n:
            self.metrics.stage.labels("decode").observe(self.now() - t2)
            self.metrics.consumed.inc(n)
            self.totals["consumed"] += n

    def _submit_due(self) -> None:
        while self.batcher.due() and len(self.in_flight) < self.s.batching.max_in_flight:
            self._submit(self.batcher.take())

    def _submit(self, batch: list[Record]) -> None:
        if batch:
            self.in_flight.append(self.executor.submit(self.processor.process, batch))
            self.metrics.in_flight.set(len(self.in_flight))

    def _backpressure(self) -> None:
        assert self.consumer is not None
        full = len(self.in_flight) >= self.s.batching.max_in_flight and len(self.batcher) >= self.s.batching.max_items
        if full and not self.paused:
            self.paused = set(self.consumer.assignment())
            if self.paused:
                self.consumer.pause(*self.paused)
                log.debug("paused %d partitions (in flight full)", len(self.paused))
        elif not full and self.paused:
            self.consumer.resume(*(self.paused & set(self.consumer.assignment())))
            self.paused = set()
        self.metrics.paused.set(len(self.paused))

    def _reap(self, block_until: float | None = None) -> None:
        """Commit finished batches in consume order; with `block_until`, wait for all of them."""
        while self.in_flight:
            head = self.in_flight[0]
            if not head.done():
                if block_until is None:
                    break
                try:
                    head.result(timeout=max(0.0, block_until - self.now()))
                except TimeoutError:
                    self.processor.abort.set()  # the batch gives up; its offsets stay uncommitted
                    head.exception()
                except Exception:
                    pass  # reported below
            self.in_flight.popleft()
            self.metrics.in_flight.set(len(self.in_flight))
            exc = head.exception()
            if exc is not None:
                if not isinstance(exc, PublishAborted):
                    log.error("batch failed; stopping without committing it", exc_info=exc)
                    self.failed = True
                # Later batches must not be committed past this one.
                for f in self.in_flight:
                    f.cancel()
                self.processor.abort.set()
                self._drop_remaining(block_until)
                self._commit(force=True)  # the batches before the failed one were acknowledged
                return
            outcome = head.result()
            for key in ("tagged", "cached", "dead"):
                self.totals[key] += getattr(outcome, key)
            for tp, off in outcome.offsets.items():
                self.pending_commit[tp] = max(self.pending_commit.get(tp, 0), off)
        self._commit(force=block_until is not None)

    def _drop_remaining(self, block_until: float | None) -> None:
        while self.in_flight:
            f = self.in_flight.popleft()
            if not f.cancelled():
                try:
                    f.result(timeout=max(0.0, (block_until or self.now() + 5) - self.now()))
                except Exception:  # uncommitted either way; redelivered after restart
                    pass
        self.metrics.in_flight.set(0)

    def _commit(self, force: bool = False) -> None:
        if not self.pending_commit or self.consumer is None:
            return
        if not force and self.now() < self._next_commit:
            return  # acknowledged but not yet committed: at worst replayed (same event ids)
        self._next_commit = self.now() + self.s.kafka.commit_interval_ms / 1000
        assigned = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in self.pending_commit.items() if tp in assigned}
        t = self.now()
        try:
            if offsets:
                self.consumer.commit(offsets=offsets, timeout_ms=10_000)
                self.totals["commits"] += 1
            self.pending_commit.clear()
        except CommitFailedError as exc:
            # The group rebalanced: these partitions' records go to their new owner (duplicates
            # carry the same event ids; nothing is lost).
            self.metrics.commit_errors.inc()
            log.warning("commit rejected after a rebalance: %s", exc)
            self.pending_commit.clear()
        except KafkaError as exc:
            self.metrics.commit_errors.inc()
            log.warning("commit of %d partitions failed, retrying with the next batch: %s", len(offsets), exc)
        self.metrics.stage.labels("commit").observe(self.now() - t)

    def _finish_all(self, budget_s: float) -> None:
        deadline = self.now() + budget_s
        while len(self.batcher):
            self._submit(self.batcher.take())
        self._reap(block_until=deadline)
        if not self.stop.is_set():
            self.processor.abort.clear()  # a rebalance drain, not shutdown: keep working afterwards

    def _report_lag(self) -> None:
        if self.now() < self._next_lag or self.consumer is None:
            return
        self._next_lag = self.now() + 5
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            try:
                pos = self.consumer.position(tp, timeout_ms=100)
            except KafkaError:
                pos = None
            if hw is not None and pos is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, hw - pos))

    def _shutdown(self) -> None:
        started = self.now()
        if not self.failed:
            self._finish_all(self.s.shutdown.drain_timeout_s)
        self._commit(force=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False, timeout_ms=5_000)
            except KafkaError as exc:
                log.warning("consumer close: %s", exc)
        try:
            self.processor.publisher.close(5.0)
        except KafkaError as exc:
            log.warning("producer close: %s", exc)
        t = self.totals
        log.info(
            "worker stopped in %.1f s: consumed %d, tagged %d (%d from cache), dead-lettered %d, %d commits%s",
            self.now() - started,
            t["consumed"],
            t["tagged"],
            t["cached"],
            t["dead"],
            t["commits"],
            " (failed)" if self.failed else "",
        )
