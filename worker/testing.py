"""Fakes beside the seams (as httpx ships `MockTransport` beside its transports): a fake clock, a
consumer that behaves like kafka-python's (assignment, pause flags and positions kept across a
rebalance, scripted revocations and errors, a commit log), a publisher with scripted failures and a
flush that hangs, an engine and a cache. For unit tests of the loop; integration tests use Tansu."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from schemas.events import TagFeedback
from worker import transport
from worker.engine import Encoded, Outputs, Tag
from worker.overrides import Override, OverridesUnavailable
from worker.transport import ConsumedRecord, Delivery, RebalanceListener, TopicPartition


class FakeClock:
    """`worker.clock.Clock` whose time moves only when told (or when something waits on it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._lock = threading.Lock()

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.t += max(0.0, seconds)

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        if not event.is_set():
            self.advance(timeout_s)
        return event.is_set()


class FakeConsumer:
    """`worker.transport.Consumer` in memory. Rebalances are scripted (`rebalance`) and happen at the
    next poll, eager-style like kafka-python: revoke everything, then assign the new set; a partition
    kept across it keeps its position and paused flag, a new one starts at its committed offset."""

    def __init__(self, topic: str, partitions: int = 1, others: Mapping[str, int] | None = None) -> None:
        """`others`: further topics (name -> partitions) the consumer may subscribe to, e.g. feedback."""
        self.topic = topic
        self.logs: dict[TopicPartition, list[ConsumedRecord]] = {
            TopicPartition(t, p): [] for t, n in {topic: partitions, **(others or {})}.items() for p in range(n)
        }
        self.positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._assignment: set[TopicPartition] = set()
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.commit_log: list[dict[TopicPartition, int]] = []
        self.listener: RebalanceListener | None = None
        self._rebalances: list[tuple[set[TopicPartition], bool]] = []
        self.poll_errors = 0  # the next n polls raise TransportError
        self.commit_errors = 0  # the next n commits raise TransportError (broker unreachable)
        self.reject_commits = False
        self.is_connected = True
        self.closed = False
        self.polls = 0
        self.on_poll: Callable[[FakeConsumer], None] | None = None
        # A silent broker: commit and close use up their whole timeout on this clock (commit then fails).
        self.frozen: FakeClock | None = None

    def tp(self, partition: int = 0) -> TopicPartition:
        return TopicPartition(self.topic, partition)

    def produce(
        self, value: bytes | None, partition: int = 0, key: bytes | None = None, ts: int = 0, topic: str | None = None
    ) -> int:
        topic = topic or self.topic
        log = self.logs[TopicPartition(topic, partition)]
        log.append(ConsumedRecord(topic, partition, len(log), key, value, ts or None))
        return len(log) - 1

    def rebalance(self, assignment: Collection[TopicPartition] | None = None, lost: bool = False) -> None:
        """At the next poll, revoke (or lose) everything and assign `assignment` (default: all)."""
        self._rebalances.append((set(self.logs) if assignment is None else set(assignment), lost))

    def _apply_rebalance(self, new: set[TopicPartition], lost: bool) -> None:
        assert self.listener is not None
        old = set(self._assignment)
        if old:
            (self.listener.on_lost if lost else self.listener.on_revoked)(old)
        for tp in old - new:
            self.positions.pop(tp, None)
            self._paused.discard(tp)
        for tp in new - old:
            self.positions[tp] = self.committed_offsets.get(tp, 0)
        self._assignment = new
        self.listener.on_assigned(set(new))

    # -- the Protocol ---------------------------------------------------------------------------
    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        assert topics[0] == self.topic and set(topics) <= {tp.topic for tp in self.logs}
        subscribed = set(topics)
        self.logs = {tp: log for tp, log in self.logs.items() if tp.topic in subscribed}
        self.listener = listener
        self.rebalance()  # the first poll joins the group

    def poll(self, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self)
        if self.poll_errors:
            self.poll_errors -= 1
            raise transport.TransportError("poll: NodeNotReadyError (scripted)")
        while self._rebalances:
            self._apply_rebalance(*self._rebalances.pop(0))
        out: list[ConsumedRecord] = []
        for tp in sorted(self._assignment - self._paused):
            log = self.logs[tp]
            while self.positions[tp] < len(log) and len(out) < max_records:
                out.append(log[self.positions[tp]])
                self.positions[tp] += 1
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        self._paused |= set(partitions) & self._assignment

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        self._paused -= set(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        assert partition in self._assignment
        self.positions[partition] = offset

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        if self.frozen is not None:
            self.frozen.advance(timeout_s)
            raise transport.TransportError("commit: KafkaTimeoutError (scripted)")
        if self.commit_errors:
            self.commit_errors -= 1
            raise transport.TransportError("commit: KafkaConnectionError (scripted)")
        if self.reject_commits or not set(offsets) <= self._assignment:
            raise transport.CommitRejected("CommitFailedError (scripted)")
        self.commit_log.append(dict(offsets))
        self.committed_offsets.update(offsets)

    def committed(self, partitions: Collection[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        return {tp: self.committed_offsets.get(tp) for tp in partitions}

    def highwater(self, partition: TopicPartition) -> int | None:
        return len(self.logs[partition]) if partition in self._assignment else None

    def connected(self) -> bool:
        return self.is_connected

    def close(self, timeout_s: float) -> None:
        if self.frozen is not None:
            self.frozen.advance(timeout_s)
        self.closed = True


class FakeDelivery:
    def __init__(self) -> None:
        self.is_done = False
        self.exception: BaseException | None = None

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None


class FakePublisher:
    """`worker.transport.Publisher` in memory. `fail_next` deliveries fail; records for which
    `stall(value)` is true are never acknowledged and their flush "hangs": it uses up its whole
    timeout on the fake clock and returns False."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.acked: list[tuple[str, bytes | None, bytes]] = []
        self._pending: list[tuple[tuple[str, bytes | None, bytes], FakeDelivery]] = []
        self.fail_next = 0
        self.stall: Callable[[bytes], bool] = lambda value: False
        self.on_stall: Callable[[], None] | None = None  # called when a flush is about to hang
        self.resets = 0
        self.closed = False
        self.max_message_bytes: int | None = None  # larger records are refused like a broker's limit
        self._lock = threading.Lock()

    def warm(self, topics: Sequence[str], timeout_s: float) -> None:
        self.warmed = list(topics)

    def send(self, topic: str, key: bytes | None, value: bytes) -> Delivery:
        d = FakeDelivery()
        with self._lock:
            self._pending.append(((topic, key, value), d))
        return d

    def flush(self, timeout_s: float) -> bool:
        with self._lock:
            still = []
            for msg, d in self._pending:
                if self.stall(msg[2]):
                    still.append((msg, d))
                    continue
                d.is_done = True
                if self.max_message_bytes is not None and len(msg[2]) + len(msg[1] or b"") > self.max_message_bytes:
                    d.exception = transport.RecordTooLarge("MessageSizeTooLargeError (scripted)")
                elif self.fail_next:
                    self.fail_next -= 1
                    d.exception = transport.TransportError("NotEnoughReplicasError (scripted)")
                else:
                    self.acked.append(msg)
            self._pending = still
        if still:
            if self.on_stall is not None:
                self.on_stall()
            self.clock.advance(timeout_s)
            return False
        return True

    def reset(self) -> None:
        self.resets += 1

    def close(self, timeout_s: float) -> None:
        if self._pending:  # unacknowledged records: a close waits its whole timeout for them
            self.clock.advance(timeout_s)
        self.closed = True

    def values(self, topic: str) -> list[bytes]:
        return [v for t, _, v in self.acked if t == topic]


class FakeEngine:
    """`worker.tagging.Engine`: one token per word plus two specials; tags a text with its word
    count. `run` raises on any text containing `poison` (or always when `broken`)."""

    model_version = "fake-1"
    taxonomy_version = "tax-1"
    explain_basis = None  # no labels or lexical channel: no candidates, value-span evidence only

    def __init__(self, poison: str = "POISON") -> None:
        self.poison, self.broken, self.runs = poison, False, 0
        self.inferred: list[str] = []  # texts of every successful run, in order

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        return [Encoded(t, np.arange(len(t.split()) + 2, dtype=np.int64), []) for t in texts]

    def run(self, items: list[Encoded]) -> Outputs:
        self.runs += 1
        if self.broken or any(self.poison in x.text for x in items):
            raise RuntimeError("onnxruntime: Non-zero status code returned while running node (scripted)")
        self.inferred += [x.text for x in items]
        return Outputs(np.full((len(items), 1), 0.9, dtype=np.float32), None)

    def decode(self, items: list[Encoded], outputs: Outputs) -> list[list[Tag]]:
        return [[Tag(f"words:{len(x) - 2}", float(outputs.scores[i, 0]))] for i, x in enumerate(items)]


class FakeCache:
    """`worker.cache.Cache` over a dict; `down` makes it behave like an unreachable Redis."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False
        self.degraded = False
        self.probes = 0

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.degraded = self.down
        return [None if self.down else self.data.get(k) for k in keys]

    def set_many(self, values: Mapping[str, bytes]) -> None:
        self.degraded = self.down
        if not self.down:
            self.data.update(values)

    def probe(self) -> None:
        self.probes += 1
        if self.degraded and not self.down:
            self.degraded = False


class ManualExecutor(Executor):
    """Runs submitted batches only when the test says so (`run`), in any order it chooses."""

    def __init__(self) -> None:
        self.queue: list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self.auto = False  # run each batch as it is submitted (e.g. for a shutdown)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self.queue.append((fut, fn, args))
        if self.auto:
            self.run(len(self.queue) - 1)
        return fut

    def run(self, index: int = 0) -> None:
        fut, fn, args = self.queue.pop(index)
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:
            fut.set_exception(exc)

    def run_all(self) -> None:
        while self.queue:
            self.run()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            for fut, _, _ in self.queue:
                fut.cancel()
            self.queue.clear()


class FakeOverrides:
    """`worker.overrides.OverrideStore` over dicts; `down` makes it behave like an unreachable Redis
    (`fetch` returns None, `known` and `put` raise)."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Override]] = {}
        self.tagged: set[str] = set()
        self.down = False
        self.fail_next = 0  # the next n `known`/`put` calls raise (then it is back)
        self.writes = 0

    def _check(self) -> None:
        if self.down or self.fail_next:
            self.fail_next = max(0, self.fail_next - 1)
            raise OverridesUnavailable("ConnectionError (scripted)")

    def fetch(self, product_ids: Sequence[str]) -> dict[str, dict[str, Override]] | None:
        if self.down:
            return None
        self.tagged.update(product_ids)
        return {pid: dict(self.data[pid]) for pid in product_ids if pid in self.data}

    def known(self, product_ids: Sequence[str]) -> set[str]:
        self._check()
        return set(product_ids) & self.tagged

    def put(self, feedback: Sequence[TagFeedback]) -> None:
        self._check()
        for fb in feedback:
            self.data.setdefault(fb.product_id, {})[fb.tag] = Override.of(fb)
            self.writes += 1
