"""The poll loop: wires the steps and owns the consumer.

    poll -> DecodeRecords -> CacheLookup -+-> hits and dead letters: ready at once -------+
                                          +-> misses: Tokenize -> Batcher ------------+
    RunBatch on the batch thread (TagBatch -> BuildMessages -> Publish) -> OffsetTracker -> commit, last.

One iteration (`step`): collect finished batches, commit what the tracker allows, submit due
batches (at most `max_in_flight`), pause or resume partitions (backpressure), poll, act on
rebalance events, decode and queue records, update health. Signal handlers only set `stop`;
`run` then drains with a deadline (`shutdown`) and returns an exit code.

`build_loop` is the one way a loop is put together (the worker, the benchmarks and the tests):
from the settings, the model, the cache, the two sides of the transport and a clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from threading import Event

from worker.batcher import Batcher
from worker.cache import Cache
from worker.clock import Abort, Clock
from worker.feedback import ApplyFeedback, FeedbackResult
from worker.health import Health
from worker.heap import Heap
from worker.metrics import Metrics
from worker.offsets import OffsetTracker
from worker.outputs import BuildMessages
from worker.overrides import ApplyOverrides, OverrideStore
from worker.publish import FLUSH_SLICE_S, Publish, PublishAborted, SendOrder
from worker.rebalance import RebalanceEvents
from worker.records import DecodeRecords, Parsed, Rejected, Tokenize, Valid
from worker.reload import ModelHolder
from worker.review_queue import RouteReview
from worker.settings import BatchingSettings, KafkaSettings, ShutdownSettings, WorkerSettings
from worker.shadow import ShadowRun
from worker.tagging import CacheLookup, Engine, Explain, TagBatch, Tagged
from worker.transport import CommitRejected, ConsumedRecord, Consumer, Publisher, TopicPartition, TransportError

log = logging.getLogger(__name__)
COMMIT_TIMEOUT_S = 10.0
COMMIT_BACKOFF_MAX_S = 5.0  # a failed commit is retried at most this far apart (recovery stays quick)
OFFLINE_POLL_MAX_S = 1.0  # while the cluster is unreachable, poll at least this often (quick recovery)
EXIT_MARGIN_S = 0.75  # of the drain budget, left for the process to exit after the loop stops
LAG_INTERVAL_S = 5.0
FEEDBACK_QUEUE_BATCHES = 2  # feedback records queued at most: this many feedback batches


Item = Valid | Tagged | Rejected  # what a batch carries: to infer, already tagged (cache hit), or dead


def source_of(item: Item) -> ConsumedRecord:
    return item.record.source if isinstance(item, Tagged) else item.source


@dataclass(frozen=True)
class BatchResult:
    tagged: int
    cached: int
    dead: int


class RunBatch:
    """One batch on the batch thread: tag the valid records, build the messages, publish them."""

    def __init__(
        self,
        tag: TagBatch,
        build: BuildMessages,
        publish: Publish,
        metrics: Metrics,
        wall_clock: Callable[[], float] = time.time,
        shadow: ShadowRun | None = None,
        overrides: ApplyOverrides | None = None,
        review: RouteReview | None = None,
        order: SendOrder | None = None,
    ) -> None:
        self.tag, self.build, self.publish, self.metrics, self.wall_clock = tag, build, publish, metrics, wall_clock
        self.shadow, self.overrides, self.review, self.order = shadow, overrides, review, order

    def __call__(self, batch: list[Item], engine: Engine | None = None, ticket: int | None = None) -> BatchResult:
        """`engine`: the model the batch was prepared with (cache lookups, tokens); None: the steps' own.
        `ticket`: the batch's place in `order` (batches running concurrently publish in that order)."""
        if self.order is None or ticket is None:
            return self._run(batch, engine, None)
        try:
            return self._run(batch, engine, ticket)
        finally:
            self.order.release(ticket)  # a batch that failed early must not hold up the later ones

    def _run(self, batch: list[Item], engine: Engine | None, ticket: int | None) -> BatchResult:
        m, started = self.metrics, self.metrics.now()
        waited = 0.0  # of the oldest item: how far behind the batch thread is
        for r in batch:
            wait_s = started - (r.record.received if isinstance(r, Tagged) else r.received)
            waited = max(waited, wait_s)
            m.queue_wait.observe(wait_s)
        m.batch_size.observe(len(batch))
        tagged = iter(self.tag([d for d in batch if isinstance(d, Valid)], engine))
        outcomes: list[Tagged | Rejected] = [next(tagged) if isinstance(d, Valid) else d for d in batch]
        model = engine or self.tag.engine
        basis = model.explain_basis
        settled: dict[str, set[str]] = {}
        if self.overrides is not None:  # human corrections, before anything is built from the tags
            outcomes, settled = self.overrides(outcomes, basis.single_slots if basis is not None else frozenset())
        with m.timed("serialize"):
            now = self.wall_clock()
            messages = self.build(outcomes, now, engine)
        if self.review is not None:  # published and acknowledged with the tag events, before the commit
            with m.timed("review"):
                messages += self.review(outcomes, basis, settled, now, model)
        if self.shadow is not None:  # its events go to its own topic, published and committed with the batch
            messages += self.shadow(outcomes, now, waited)
        if self.order is not None and ticket is not None:
            with self.order.turn(ticket, self.publish.abort):
                self.publish(messages)
        else:
            self.publish(messages)
        acked = self.wall_clock()
        dead = 0
        for o in outcomes:
            if isinstance(o, Rejected):
                dead += 1
                m.dead_letters.labels(o.invalid.reason).inc()
            elif o.record.source.timestamp_ms:
                m.end_to_end.observe(max(0.0, acked - o.record.source.timestamp_ms / 1000))
        m.produced.inc(len(outcomes) - dead)  # live events only: shadow events are counted by the shadow
        return BatchResult(len(outcomes) - dead, sum(1 for o in outcomes if isinstance(o, Tagged) and o.cached), dead)


def _first_offsets(records: list[ConsumedRecord]) -> dict[TopicPartition, int]:
    first: dict[TopicPartition, int] = {}
    for r in records:
        first.setdefault(r.tp, r.offset)
    return first


def _in(partitions: frozenset[TopicPartition], item: Item) -> bool:
    return source_of(item).tp in partitions


class Loop:
    def __init__(
        self,
        connect: Callable[[], Consumer],
        kafka: KafkaSettings,
        batching: BatchingSettings,
        shutdown: ShutdownSettings,
        decode: DecodeRecords,
        lookup: CacheLookup,
        tokenize: Tokenize,
        run_batch: Callable[[list[Item], Engine | None, int | None], BatchResult],
        publisher: Publisher,
        metrics: Metrics,
        health: Health,
        stop: Event,
        abort: Abort,
        clock: Clock,
        executor: Executor | None = None,
        models: ModelHolder | None = None,
        feedback: Callable[[list[ConsumedRecord]], FeedbackResult] | None = None,
        feedback_executor: Executor | None = None,
        feedback_batch: int = 500,
        order: SendOrder | None = None,
        heap: Heap | None = None,
    ) -> None:
        self.connect, self.kafka, self.batching = connect, kafka, batching
        self.drain_timeout_s = shutdown.drain_timeout_s
        self.decode, self.lookup, self.tokenize = decode, lookup, tokenize
        self.run_batch, self.publisher = run_batch, publisher
        self.metrics, self.health, self.stop, self.abort, self.clock = metrics, health, stop, abort, clock
        # Up to `max_in_flight` batches run at once (one graph run at a time: worker/engine.py),
        # publishing in submission order (`order`: tickets taken here, on the poll thread).
        self.executor = executor or ThreadPoolExecutor(max_workers=batching.max_in_flight, thread_name_prefix="batch")
        self.order = order
        self.heap = heap  # None: the collector as Python sets it (tests, benchmarks in-process)
        self._old_batches: set[int] = set()  # in flight with the model a reload replaced
        # Cache hits and dead letters need no inference: a batch of them may hold up to a whole poll.
        self.max_ready = max(batching.max_items, kafka.max_poll_records)
        self.models = models  # None: a fixed model (the steps' own engine)
        # Feedback records (worker/feedback.py) take their own path: one batch at a time on their own
        # thread (a Redis outage retries there without holding up tagging), tracked and committed
        # like any batch. None: the feedback topic is not consumed.
        self.feedback, self.feedback_batch = feedback, feedback_batch
        self.feedback_executor = feedback_executor or (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback") if feedback is not None else None
        )
        self.feedback_queue: list[ConsumedRecord] = []
        self.feedback_ids: set[int] = set()  # in-flight feedback batches (at most one: decisions stay in order)
        self.batcher: Batcher[Valid] = Batcher(
            batching.max_items, batching.max_tokens, batching.max_wait_ms / 1000, now=clock.now
        )
        self.ready: list[Tagged | Rejected] = []  # cache hits and dead letters: no batching, no inference
        self.inferring: set[int] = set()  # in-flight batches that run the model
        self.tracker = OffsetTracker()
        self.events = RebalanceEvents()
        self.in_flight: dict[int, Future[BatchResult]] = {}
        self.freed = Event()  # set when any batch finishes: wakes a poll loop waiting for a free slot
        self.rewind: dict[TopicPartition, int] = {}
        self.remote_committed: dict[TopicPartition, int | None] = {}
        self.consumer: Consumer | None = None
        self.failed = False
        self.totals = {"consumed": 0, "tagged": 0, "cached": 0, "dead": 0, "commits": 0}
        self._next_commit = 0.0
        self._commit_failures = 0
        self._offline_wait = 0.0
        self._rejoining = False  # revoked, waiting for the next assignment
        self._missed = True  # the last poll brought a cache miss (at start: as if it had)
        self._next_lag = 0.0

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> int:
        if self.consumer is None and not self.start():
            return 0
        if self.heap is not None:
            self.heap.settle()  # all that start-up loaded lives as long as the process (worker/heap.py)
        try:
            while not self.stop.is_set() and not self.failed:
                self.step()
        finally:
            self.shutdown()
        return 1 if self.failed else 0

    def start(self) -> bool:
        """Connect and subscribe, retrying with backoff until connected or stopped."""
        backoff = 0.5
        while not self.stop.is_set():
            try:
                consumer = self.connect()
                topics = [self.kafka.input_topic] + ([self.kafka.feedback_topic] if self.feedback is not None else [])
                consumer.subscribe(topics, self.events)
            except TransportError as exc:
                self.health.kafka_ok = False
                self.health.last_tick = self.clock.now()  # alive and retrying: liveness must not restart us
                log.warning("kafka unreachable (%s); retrying in %.1f s", exc, backoff)
                self.clock.wait(self.stop, backoff)
                backoff = min(backoff * 2, self.kafka.retry_backoff_max_s)
                continue
            self.consumer = consumer
            self.health.kafka_ok = True
            log.info("consuming %s as group %s", self.kafka.input_topic, self.kafka.group_id)
            return True
        return False

    def step(self) -> None:
        self._reap()
        self._commit()
        self._switch_model()
        self._submit_due()
        self._submit_feedback()
        self._backpressure()
        self._poll()
        self._tick()

    # -- batches ------------------------------------------------------------------------------
    def _submit(self, batch: list[Item]) -> None:
        batch_id = self.tracker.open((source_of(i).tp, source_of(i).offset) for i in batch)
        # The batch runs with the model its items were looked up and tokenized with, even when a
        # reload switches the live model before the batch thread gets to it.
        engine = self.models.current if self.models is not None else None
        ticket = self.order.ticket() if self.order is not None else None
        self.in_flight[batch_id] = fut = self.executor.submit(self.run_batch, batch, engine, ticket)
        fut.add_done_callback(self._batch_done)
        if any(isinstance(i, Valid) for i in batch):
            self.inferring.add(batch_id)
        self.metrics.in_flight.set(len(self.in_flight))

    def _batch_done(self, _fut: Future[BatchResult]) -> None:
        self.freed.set()

    def _tag_batches(self) -> int:
        return len(self.in_flight) - len(self.feedback_ids)

    def _submit_feedback(self) -> None:
        if self.feedback is None or self.feedback_ids or not self.feedback_queue or self.feedback_executor is None:
            return
        batch = self.feedback_queue[: self.feedback_batch]
        self.feedback_queue = self.feedback_queue[self.feedback_batch :]
        batch_id = self.tracker.open((r.tp, r.offset) for r in batch)
        self.in_flight[batch_id] = self.feedback_executor.submit(self._run_feedback, batch)
        self.feedback_ids.add(batch_id)

    def _run_feedback(self, records: list[ConsumedRecord]) -> BatchResult:
        assert self.feedback is not None
        result = self.feedback(records)
        return BatchResult(0, 0, result.dead)

    def _submit_due(self) -> None:
        b = self.batching
        if self.ready and self._tag_batches() < b.max_in_flight:
            ready, self.ready = self.ready, []
            self._submit(list(ready))
        while self._tag_batches() < b.max_in_flight and self.batcher.due(
            idle=b.adaptive and not self.inferring.intersection(self.in_flight)
        ):
            self._submit(list(self.batcher.take()))

    def _switch_model(self) -> None:
        """A hot reload takes effect here, between batches: what was queued (looked up in the cache
        and tokenized with the old model) is sent as batches of the old model, then the new one
        becomes live for everything polled from now on. This may briefly exceed `max_in_flight`
        by the queued batches (at most one batch plus one poll of records, as backpressure bounds the queue)."""
        if self.models is None or (new := self.models.take_pending()) is None:
            return
        if self.ready:
            ready, self.ready = self.ready, []
            self._submit(list(ready))
        while len(self.batcher):
            self._submit(list(self.batcher.take()))
        self.models.activate(new)
        if self.heap is not None:
            self.heap.reloaded()
            self._old_batches = set(self.in_flight)

    def _reap(self) -> None:
        self.freed.clear()  # before looking: a batch finishing from here on sets it again
        for batch_id, fut in list(self.in_flight.items()):
            if not fut.done():
                continue
            del self.in_flight[batch_id]
            self.inferring.discard(batch_id)
            self.feedback_ids.discard(batch_id)
            exc = fut.exception()
            if exc is None:
                result = fut.result()
                self.tracker.done(batch_id)
                self.totals["tagged"] += result.tagged
                self.totals["cached"] += result.cached
                self.totals["dead"] += result.dead
                continue
            self.tracker.failed(batch_id)  # never committed, nor anything consumed after it
            if not isinstance(exc, PublishAborted):
                log.error("batch failed; stopping without committing it", exc_info=exc)
                self.failed = True
        if self.heap is not None and self.heap.unsettled and not self._old_batches.intersection(self.in_flight):
            self.heap.settle()  # the old model's last batch is done: its cycles can go
        self.metrics.in_flight.set(len(self.in_flight))

    def _commit(self, force: bool = False, timeout_s: float | None = None) -> None:
        if self.consumer is None or (not force and self.clock.now() < self._next_commit):
            return
        assigned = self.consumer.assignment()
        offsets = {tp: off for tp, off in self.tracker.committable().items() if tp in assigned}
        if not offsets:
            return
        self._next_commit = self.clock.now() + self.kafka.commit_interval_ms / 1000
        if timeout_s is None:
            # A commit to a silent broker blocks the poll thread for its whole timeout; a SIGTERM
            # arriving meanwhile must still find most of its drain budget.
            timeout_s = min(COMMIT_TIMEOUT_S, self.drain_timeout_s / 4)
        try:
            with self.metrics.timed("commit"):
                self.consumer.commit(offsets, timeout_s)
        except CommitRejected as exc:
            # A rebalance is under way: its revoke/lost event drops these offsets (the records go
            # to the partitions' next owner; duplicates carry the same event ids).
            self.metrics.commit_errors.inc()
            log.warning("commit rejected after a rebalance: %s", exc)
            return
        except TransportError as exc:
            # Broker away: retry with backoff, one line per attempt (not one per commit interval).
            self.metrics.commit_errors.inc()
            self._commit_failures += 1
            backoff = min(COMMIT_BACKOFF_MAX_S, 0.2 * 2 ** min(self._commit_failures, 10))
            self._next_commit = self.clock.now() + backoff
            log.warning(
                "commit of %d partitions failed (%d in a row), retrying in %.1f s: %s",
                len(offsets),
                self._commit_failures,
                backoff,
                exc,
            )
            return
        self._commit_failures = 0
        self.tracker.committed(offsets)
        self.totals["commits"] += 1

    # -- consumer -----------------------------------------------------------------------------
    def _backpressure(self) -> None:
        """Pause every assigned partition while the in-flight slots and the next batch are full,
        resume otherwise. Reconciled against the client each time: kafka-python keeps the paused
        flag of partitions that survive a rebalance, so a flag set before one must be cleared."""
        assert self.consumer is not None
        b = self.batching
        full = self._tag_batches() >= b.max_in_flight and (
            len(self.batcher) >= b.max_items or len(self.ready) >= self.max_ready
        )
        assigned = self.consumer.assignment()
        # All or nothing, feedback partitions included: with kafka-python (on Tansu) pausing one
        # topic's partitions while another's were fetched stalled a resumed partition for good.
        # The feedback queue is bounded in `_poll` instead (records over its cap are read again).
        want = assigned if full else set()
        paused = self.consumer.paused() & assigned
        if want - paused:
            self.consumer.pause(want - paused)
        if paused - want:
            self.consumer.resume(paused - want)
        self.metrics.paused.set(len(want))

    def _poll(self) -> None:
        assert self.consumer is not None
        timeout_s = self.kafka.poll_timeout_ms / 1000
        # With no room for another batch the poll waits its full timeout (partitions paused, or
        # room bounded) instead of spinning against ONNX Runtime's threads. Never poll(0) then:
        # kafka-python completes a group rejoin only inside poll's time, and a member that cannot
        # rejoin stalls the whole group's rebalance.
        if self._tag_batches() < self.batching.max_in_flight and (left := self.batcher.time_left()) is not None:
            timeout_s = min(timeout_s, left)
        # Misses are bounded by what the batch threads take next, hits by one hit batch. While the
        # last poll brought hits only and no miss is queued, one poll may bring a whole hit batch
        # (it overfills the misses' bound only when a stream of hits turns into misses).
        misses_room = self.batching.max_items * (self.batching.max_in_flight + 1) - len(self.batcher)
        hits_room = self.max_ready - len(self.ready)
        hits_only = not len(self.batcher) and not self._missed
        room = max(1, hits_room if hits_only else min(misses_room, hits_room))
        slots_taken = self._tag_batches() >= self.batching.max_in_flight
        if slots_taken and not self._rejoining and self.clock.wait(self.freed, timeout_s):
            # Every batch slot was taken, and a batch finished within the poll's timeout: the next
            # step reaps it and polls with room, instead of the client sleeping out the timeout
            # (cache-hit batches take a few ms; that sleep was a third of the replay). When none
            # finishes, or while rejoining the group, the consumer is polled as before (kafka-python
            # completes a rejoin only inside poll).
            return
        try:
            with self.metrics.timed("poll"):
                records = self.consumer.poll(timeout_s, min(room, self.kafka.max_poll_records))
        except TransportError as exc:
            log.warning("poll failed: %s", exc)
            self.health.kafka_ok = False
            self.clock.wait(self.stop, 0.5)
            return
        self.health.kafka_ok = self.consumer.connected()
        fenced, rewound = self._rebalance()
        if not self.health.kafka_ok and not self._rejoining:
            # Cut off from the cluster, kafka-python's poll returns at once (no coordinator, no
            # fetch to wait on) and each call wakes its IO thread: polled back to back that took
            # 6-13 CPU-seconds per 20 s of outage. Poll less often, backing off to 1 s. Never
            # while rejoining after a revoke (no heartbeats then, so "not connected"): kafka-python
            # completes a join only inside poll, and a slow member stalls the group's rebalance.
            self._offline_wait = min(OFFLINE_POLL_MAX_S, max(0.05, self._offline_wait * 2))
            self.clock.wait(self.stop, self._offline_wait)
        else:
            self._offline_wait = 0.0
        if not records:
            return
        assigned = self.consumer.assignment()
        keep: list[ConsumedRecord] = []
        dropped: dict[TopicPartition, int] = {}
        for r in records:
            if r.tp in assigned and r.tp not in fenced:
                keep.append(r)
            else:
                dropped.setdefault(r.tp, r.offset)
        # Records fetched around a rebalance are dropped, never skipped: read them again.
        for tp, offset in dropped.items():
            if tp in rewound:
                continue  # already sent back to the last commit
            if tp in assigned:
                self.consumer.seek(tp, offset)
            else:
                self.rewind[tp] = min(self.rewind.get(tp, offset), offset)
        if self.feedback is not None:
            feedback = [r for r in keep if r.topic == self.kafka.feedback_topic]
            keep = [r for r in keep if r.topic != self.kafka.feedback_topic]
            if len(self.feedback_queue) >= FEEDBACK_QUEUE_BATCHES * self.feedback_batch:
                for tp, offset in _first_offsets(feedback).items():  # full: read them again later
                    self.consumer.seek(tp, offset)
                feedback = []
            for r in feedback:
                self.tracker.seen(r.tp, r.offset)
            self.feedback_queue += feedback
        for r in keep:
            self.tracker.seen(r.tp, r.offset)
        self._prepare(keep)
        self.metrics.consumed.inc(len(keep))
        self.totals["consumed"] += len(keep)

    def _prepare(self, records: list[ConsumedRecord]) -> None:
        """Decode; cache hits and dead letters are ready at once; misses are tokenized and batched."""
        decoded = self.decode(records, self.clock.now())
        hits, misses = self.lookup([d for d in decoded if isinstance(d, Parsed)])
        self._missed = bool(misses)
        tokenized = self.tokenize(misses)
        hit_of = {id(t.record): t for t in hits}
        tokens_of = {id(p): v for p, v in zip(misses, tokenized, strict=True)}
        for d in decoded:
            item = d if isinstance(d, Rejected) else hit_of.get(id(d)) or tokens_of[id(d)]
            if isinstance(item, Valid):
                self.batcher.add(item, item.tokens)
            else:
                self.ready.append(item)

    def _rebalance(self) -> tuple[set[TopicPartition], set[TopicPartition]]:
        """Act on rebalance events on this thread. Returns the partitions whose polled records are
        stale, and those sent back to their last commit."""
        assert self.consumer is not None
        fenced: set[TopicPartition] = set()
        rewound: set[TopicPartition] = set()
        for kind, partitions in self.events.drain():
            names = ", ".join(str(tp) for tp in sorted(partitions))
            if kind == "assigned":
                self._rejoining = False
                log.info("partitions assigned: %s", names)
                # A partition kept across the rebalance keeps its fetch position in kafka-python,
                # past work that was dropped on revoke: read it again from the last commit.
                for tp in partitions & self.rewind.keys():
                    self.consumer.seek(tp, self.rewind[tp])
                    rewound.add(tp)
                    fenced.add(tp)
                self.rewind.clear()
                self.remote_committed.clear()
                continue
            self._rejoining = True
            log.info("partitions %s: %s; their uncommitted work is dropped", kind, names)
            self.rewind.update(self.tracker.forget(partitions))
            self.batcher.drop(partial(_in, partitions))
            self.ready = [i for i in self.ready if not _in(partitions, i)]
            self.feedback_queue = [r for r in self.feedback_queue if r.tp not in partitions]
            fenced |= partitions
        return fenced, rewound

    # -- health and lag -----------------------------------------------------------------------
    def _tick(self) -> None:
        self.health.last_tick = self.clock.now()
        if self.health.cache is not None:
            self.health.cache.probe()
        self.metrics.ready.set(1 if self.health.ready else 0)
        if self.clock.now() >= self._next_lag:
            self._next_lag = self.clock.now() + LAG_INTERVAL_S
            self._report_lag()

    def _report_lag(self) -> None:
        """Highwater minus the committed offset: consumed-but-uncommitted records count as lag."""
        assert self.consumer is not None
        # The gauge is labelled by partition only: it reports the input topic (feedback is tiny).
        assigned = {tp for tp in self.consumer.assignment() if tp.topic == self.kafka.input_topic}
        unknown = [tp for tp in assigned if self.tracker.last_committed(tp) is None and tp not in self.remote_committed]
        if unknown:
            try:
                self.remote_committed.update(self.consumer.committed(unknown, timeout_s=1.0))
            except TransportError as exc:
                log.debug("committed offsets unavailable: %s", exc)
        for tp in assigned:
            hw = self.consumer.highwater(tp)
            base = self.tracker.last_committed(tp)
            if base is None:
                base = self.remote_committed.get(tp) or 0
            if hw is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, hw - base))

    # -- shutdown -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop fetching, publish what was consumed, commit, close: all within `drain_timeout_s`,
        counted from the signal (`abort.requested_at`; a step may have been blocked when it came).
        Publishing gets the budget minus a reserve; at its deadline `abort` cuts the publish short
        and those batches stay uncommitted (redelivered after restart). The reserve is shared by
        the commit and the two closes, each given a part of what is left, and the exit margin."""
        self.health.stopping = True
        self.metrics.ready.set(0)
        started = self.abort.requested_at if self.abort.requested_at is not None else self.clock.now()
        deadline = started + self.drain_timeout_s - min(EXIT_MARGIN_S, self.drain_timeout_s / 10)
        self.abort.deadline = deadline - min(5.0, self.drain_timeout_s / 4)
        if self.failed:
            self.batcher.take_all()
            self.ready = []
        if self.ready:
            ready, self.ready = self.ready, []
            self._submit(list(ready))
        while len(self.batcher):
            self._submit(list(self.batcher.take()))
        for fut in list(self.in_flight.values()):
            wait([fut], timeout=max(0.0, self.abort.deadline - self.clock.now()))
            if not fut.done():
                self.abort.set()
                wait([fut], timeout=2 * FLUSH_SLICE_S)

        def share(fraction: float) -> float:
            return max(0.05, (deadline - self.clock.now()) * fraction)

        self._reap()
        self._commit(force=True, timeout_s=share(0.4))
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.feedback_executor is not None:
            self.feedback_executor.shutdown(wait=False, cancel_futures=True)
        if self.consumer is not None:
            try:
                self.consumer.close(timeout_s=share(0.5))
            except TransportError as exc:
                log.warning("consumer close: %s", exc)
        try:
            self.publisher.close(share(1.0))
        except TransportError as exc:
            log.warning("producer close: %s", exc)
        t = self.totals
        log.info(
            "worker stopped in %.1f s: consumed %d, tagged %d (%d from cache), dead-lettered %d, %d commits%s",
            self.clock.now() - started,
            t["consumed"],
            t["tagged"],
            t["cached"],
            t["dead"],
            t["commits"],
            " (failed)" if self.failed else "",
        )


def build_loop(
    settings: WorkerSettings,
    engine: Engine,
    cache: Cache,
    connect: Callable[[], Consumer],
    publisher: Publisher,
    clock: Clock,
    *,
    metrics: Metrics | None = None,
    health: Health | None = None,
    executor: Executor | None = None,
    shadow: ShadowRun | None = None,
    overrides: OverrideStore | None = None,
    feedback_executor: Executor | None = None,
    wall_clock: Callable[[], float] = time.time,
    heap: Heap | None = None,
) -> Loop:
    """The poll loop and its steps, each given its own settings section. `engine` is a fixed model,
    or a `ModelHolder` that the loop switches between batches on a hot reload. Fresh metrics and
    health (with `cache` to probe) unless given; the loop's `stop` and `abort` are new, for the
    caller's signal handlers. `overrides` (human corrections, worker/overrides.py): applied to every
    tag event, and the feedback topic is consumed into them; None: model-only tags, no feedback."""
    metrics = metrics or Metrics(now=clock.now)
    health = health or Health(cache=cache)
    stop, abort, k, prefix = Event(), Abort(clock), settings.kafka, settings.redis.key_prefix
    review = settings.review
    # The loop's own pool runs batches concurrently, so they take turns to publish; an injected
    # executor (tests, benchmarks) runs them in whatever order it chooses, one at a time.
    order = SendOrder() if executor is None else None
    run_batch = RunBatch(
        TagBatch(engine, cache, prefix, metrics, Explain(settings.evidence, review.margin if review.enabled else 0.0)),
        BuildMessages(k, engine, settings.limits),
        Publish(publisher, k, metrics, health, abort, clock),
        metrics,
        wall_clock=wall_clock,
        shadow=shadow,
        overrides=ApplyOverrides(overrides, metrics) if overrides is not None else None,
        review=RouteReview(review, k.review_topic, metrics) if review.enabled else None,
        order=order,
    )
    feedback = None
    if overrides is not None:  # its own Publish: feedback batches run on their own thread
        publish = Publish(publisher, k, metrics, health, abort, clock)
        feedback = ApplyFeedback(overrides, publish, k, settings.limits, metrics, abort, stop)
    return Loop(
        connect,
        k,
        settings.batching,
        settings.shutdown,
        DecodeRecords(settings.limits, metrics),
        CacheLookup(cache, prefix, engine, metrics),
        Tokenize(engine, metrics),
        run_batch,
        publisher,
        metrics,
        health,
        stop,
        abort,
        clock,
        executor=executor,
        models=engine if isinstance(engine, ModelHolder) else None,
        feedback=feedback,
        feedback_executor=feedback_executor,
        feedback_batch=settings.feedback.max_items,
        order=order,
        heap=heap,
    )
