"""The poll loop and its steps, driven with the fakes in `worker.testing` (no broker, no sleeps)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from schemas.events import DeadLetter, TagEvent
from worker.clock import Abort
from worker.health import Health
from worker.loop import COMMIT_BACKOFF_MAX_S, Loop, build_loop
from worker.metrics import Metrics
from worker.settings import BatchingSettings, KafkaSettings, LimitSettings, ShutdownSettings, load_settings
from worker.testing import FakeCache, FakeClock, FakeConsumer, FakeEngine, FakePublisher, ManualExecutor

KAFKA = KafkaSettings(input_topic="in", output_topic="out", dlq_topic="dlq", commit_interval_ms=0, poll_timeout_ms=1)


@dataclass
class Rig:
    clock: FakeClock
    consumer: FakeConsumer
    publisher: FakePublisher
    engine: FakeEngine
    cache: FakeCache
    metrics: Metrics
    health: Health
    stop: threading.Event
    abort: Abort
    loop: Loop
    executor: Executor

    @property
    def manual(self) -> ManualExecutor:
        """The executor, when batches run only when told (the default)."""
        assert isinstance(self.executor, ManualExecutor)
        return self.executor

    def produce(self, ids: Iterable[int | str]) -> None:
        for i in ids:
            self.consumer.produce(product(i))

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.loop.step()

    def run_all(self, max_steps: int = 50) -> None:
        """Step, running every submitted batch, until nothing is queued or in flight."""
        for _ in range(max_steps):
            self.loop.step()
            self.manual.run_all()
            fetched = all(self.consumer.positions[tp] == len(self.consumer.logs[tp]) for tp in self.consumer.positions)
            if fetched and not len(self.loop.batcher) and not self.loop.ready and not self.loop.in_flight:
                self.loop.step()  # reap and commit the last one
                return
        raise AssertionError("loop did not settle")

    def products(self, topic: str = "out") -> list[str]:
        return [json.loads(v)["product_id"] for v in self.publisher.values(topic)]

    def gauge(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or None)


def rig(
    partitions: int = 1,
    max_items: int = 2,
    max_in_flight: int = 1,
    drain_timeout_s: float = 20.0,
    max_wait_ms: float = 0,
    executor: Executor | None = None,
    pool: bool = False,
    engine: FakeEngine | None = None,
) -> Rig:
    """`pool`: the loop's own thread pool (batches run concurrently, as in the worker) instead of
    an executor that runs batches only when the test says so."""
    clock = FakeClock()
    consumer, publisher, cache = FakeConsumer("in", partitions), FakePublisher(clock), FakeCache()
    engine = engine or FakeEngine()
    settings = load_settings(
        kafka=KAFKA,
        batching=BatchingSettings(max_items=max_items, max_wait_ms=max_wait_ms, max_in_flight=max_in_flight),
        shutdown=ShutdownSettings(drain_timeout_s=drain_timeout_s),
    )
    executor = None if pool else executor or ManualExecutor()
    wall = 1_750_000_000.0  # fixed event timestamps
    loop = build_loop(
        settings, engine, cache, lambda: consumer, publisher, clock, executor=executor, wall_clock=lambda: wall
    )
    assert loop.start()
    m, h = loop.metrics, loop.health
    return Rig(clock, consumer, publisher, engine, cache, m, h, loop.stop, loop.abort, loop, loop.executor)


def product(i: int | str, title: str | None = None) -> bytes:
    return json.dumps({"product_id": f"p-{i}", "title": title or f"red cotton shirt {i}"}).encode()


def test_out_of_order_completion_commits_in_consume_order() -> None:
    r = rig(max_items=2, max_in_flight=2)
    r.produce(range(4))
    r.steps(2)  # poll 4 records, then submit two batches of 2
    ex = r.manual
    assert len(ex.queue) == 2
    ex.run(1)  # the second batch finishes first
    r.steps(1)
    assert r.consumer.commit_log == [], "committed past a batch still in flight"
    ex.run(0)
    r.steps(1)
    assert r.consumer.commit_log == [{r.consumer.tp(): 4}]
    assert sorted(r.products()) == [f"p-{i}" for i in range(4)]


def test_nothing_is_committed_past_a_failed_batch() -> None:
    r = rig(max_items=2, max_in_flight=2)
    r.produce(range(4))
    r.steps(2)
    ex = r.manual
    ex.run(1)  # batch 2 succeeds
    r.engine.broken = True
    ex.run(0)  # batch 1: every item fails on its own -> a fault, not dead letters
    r.steps(1)
    assert r.loop.failed
    ex.auto = True
    r.loop.shutdown()
    assert r.consumer.commit_log == []
    assert r.publisher.values("dlq") == []


def stalled_rig(budget: float) -> Rig:
    """Two records that publish, then two whose publish hangs (a silent broker), run on a thread."""
    r = rig(max_items=2, max_in_flight=1, drain_timeout_s=budget, executor=ThreadPoolExecutor(1))
    r.produce(range(2))
    for i in range(2):
        r.consumer.produce(product(f"stall-{i}"))
    r.publisher.stall = lambda value: b"stall" in value
    return r


def await_drain(r: Rig) -> None:
    """Let the loop begin its drain before a stalled flush uses up fake time."""
    for _ in range(1000):
        if r.abort.deadline != math.inf:
            break
        threading.Event().wait(0.01)


def run_to_exit(r: Rig) -> int:
    code: list[int] = []
    t = threading.Thread(target=lambda: code.append(r.loop.run()))
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "shutdown did not return"
    assert r.consumer.closed and r.publisher.closed
    assert all(off <= 2 for c in r.consumer.commit_log for off in c.values()), "committed an unacknowledged batch"
    return code[0]


def test_sigterm_with_a_hung_broker_returns_within_the_drain_budget() -> None:
    budget = 20.0
    r = stalled_rig(budget)
    stopped_at: list[float] = []

    def sigterm_when_stalled() -> None:
        if not stopped_at:
            stopped_at.append(r.clock.now())
            r.stop.set()
            await_drain(r)

    r.publisher.on_stall = sigterm_when_stalled
    assert run_to_exit(r) == 0
    assert r.clock.now() - stopped_at[0] <= budget
    assert r.consumer.committed_offsets == {r.consumer.tp(): 2}


def test_every_wait_of_the_drain_fits_the_budget_counted_from_the_signal() -> None:
    # The broker goes silent: publish, commit and both closes each use up whatever time they are
    # given, and the SIGTERM came while a step was blocked. Before: the budget counted from the
    # start of the drain and the commit took all that was left, the closes came on top (11.6 s
    # against 10 s in the fault suite).
    budget = 10.0
    r = stalled_rig(budget)

    def broker_freezes_then_sigterm() -> None:
        if r.abort.requested_at is None:
            r.consumer.frozen = r.clock
            r.abort.requested_at = r.clock.now()
            r.clock.advance(budget / 4)  # the step was blocked in a commit when the signal came
            r.stop.set()
            await_drain(r)

    r.publisher.on_stall = broker_freezes_then_sigterm
    assert run_to_exit(r) == 0 and r.abort.requested_at is not None
    assert r.clock.now() - r.abort.requested_at <= budget - 0.5, "no time left for the process to exit"


def test_failed_commits_back_off_and_log_once_per_attempt(caplog: pytest.LogCaptureFixture) -> None:
    # Before: with the broker away, a commit (and a warning) every commit interval, 103 lines in
    # one 30 s outage of the fault suite; and recovery must not wait long once it is back.
    r = rig(max_items=2)
    r.consumer.produce(product(0))
    r.consumer.produce(product(1))
    r.consumer.commit_errors = 10**6
    caplog.set_level(logging.WARNING, logger="worker.loop")
    for _ in range(400):  # 20 s of steps
        r.steps(1)
        r.manual.run_all()
        r.clock.advance(0.05)
    attempts = 10**6 - r.consumer.commit_errors
    assert 3 <= attempts <= 10
    assert len([m for m in caplog.messages if "commit of" in m]) == attempts
    r.consumer.commit_errors = 0
    for _ in range(int(COMMIT_BACKOFF_MAX_S / 0.05) + 1):
        r.steps(1)
        r.clock.advance(0.05)
    assert r.consumer.committed_offsets == {r.consumer.tp(): 2}


def test_polls_slow_down_while_the_cluster_is_unreachable() -> None:
    # kafka-python's poll returns at once without a broker: polled back to back, the loop burnt
    # 6-13 CPU-seconds per 20 s of outage in the fault suite.
    r = rig()
    r.steps(2)
    r.consumer.is_connected = False
    t0, polls0 = r.clock.now(), r.consumer.polls
    for _ in range(1000):
        if r.clock.now() - t0 >= 20:
            break
        r.steps(1)
    assert r.clock.now() - t0 >= 20, "the loop never waited between polls"
    assert r.consumer.polls - polls0 <= 30  # about one a second once backed off
    assert not r.health.ready
    r.consumer.is_connected = True
    r.steps(1)
    t1 = r.clock.now()
    r.steps(5)
    assert r.clock.now() == t1 and r.health.kafka_ok  # back at once to polling without pauses


def test_no_poll_backoff_while_rejoining_after_a_revoke() -> None:
    # No heartbeats while rejoining, so the consumer reports "not connected"; backing off then kept
    # a paused member from ever rejoining in the fault suite's rebalance storm.
    r = rig()
    r.steps(2)
    r.consumer.is_connected = False
    r.loop.events.on_revoked({r.consumer.tp()})  # kafka-python's listener, before the JoinGroup
    t0 = r.clock.now()
    r.steps(5)
    assert r.clock.now() == t0, "backed off while rejoining"
    r.loop.events.on_assigned({r.consumer.tp()})
    r.steps(2)
    assert r.clock.now() > t0  # assigned again and still cut off: back to backing off


def test_backpressure_pauses_then_resumes() -> None:
    r = rig(max_items=1, max_in_flight=1)
    r.produce(range(3))
    r.steps(2)  # poll 2 (room for the next batches only); submit 1 -> slots full and a full batch waiting
    tp = r.consumer.tp()
    assert r.consumer.paused() == {tp}
    assert r.gauge("tagger_paused_partitions") == 1
    consumed = r.loop.totals["consumed"]
    r.consumer.produce(product(3))
    r.steps(1)
    assert r.loop.totals["consumed"] == consumed, "a paused partition was fetched"
    r.run_all()
    assert r.consumer.paused() == set()
    assert r.consumer.committed_offsets == {tp: 4}
    assert sorted(r.products()) == [f"p-{i}" for i in range(4)]


def test_rebalance_while_paused_and_a_batch_is_stuck_loses_nothing() -> None:
    # The audit's failure: a rebalance while partitions are paused and a batch is stuck. The
    # member keeps the partition; kafka-python keeps its paused flag and its fetch position.
    r = rig(max_items=2, max_in_flight=1)
    r.produce(range(6))
    r.steps(2)  # batch (0, 1) in flight and stuck; 2..5 queued; partition paused
    tp = r.consumer.tp()
    assert r.consumer.paused() == {tp}
    r.consumer.rebalance()  # revoke everything, assign the same partition again
    r.steps(1)
    ex = r.manual
    ex.run_all()  # the stuck batch finishes after the rebalance: its offsets are stale
    r.run_all()
    assert r.consumer.paused() == set(), "a kept partition stayed paused"
    assert r.consumer.committed_offsets == {tp: 6}
    assert set(r.products()) == {f"p-{i}" for i in range(6)}, "a record was committed without a tag event"


def test_revocation_mid_batch_commits_nothing_for_the_revoked_partition() -> None:
    r = rig(partitions=2, max_items=4, max_in_flight=1)
    for i in range(2):
        r.consumer.produce(product(f"a{i}"), partition=0)
        r.consumer.produce(product(f"b{i}"), partition=1)
    r.steps(2)  # one batch of 4 across both partitions, in flight
    r.consumer.rebalance([r.consumer.tp(0)])  # partition 1 goes to another member
    r.steps(1)
    ex = r.manual
    ex.run_all()
    r.run_all()
    commits = {tp for c in r.consumer.commit_log for tp in c}
    assert commits == {r.consumer.tp(0)}
    assert r.consumer.committed_offsets == {r.consumer.tp(0): 2}


def test_lost_partitions_are_read_again_from_the_last_commit() -> None:
    r = rig(max_items=2, max_in_flight=1)
    r.produce(range(4))
    r.steps(2)
    ex = r.manual
    ex.run_all()
    r.steps(2)  # batch (0, 1) committed; batch (2, 3) in flight
    tp = r.consumer.tp()
    assert r.consumer.committed_offsets == {tp: 2}
    r.consumer.rebalance(lost=True)
    r.steps(1)
    assert r.consumer.positions[tp] == 2
    r.run_all()
    assert r.consumer.committed_offsets == {tp: 4}


def test_poison_records_are_dead_letters_and_the_loop_keeps_running() -> None:
    r = rig(max_items=4)
    r.consumer.produce(b'{"product_id": "n", "title": "t", "price": ' + b"9" * 5000 + b"}")
    r.consumer.produce(product(1, "a POISON title that breaks the model"))
    r.consumer.produce(product(2))
    r.consumer.produce(product(3))
    r.run_all()
    dead = [DeadLetter.model_validate_json(v) for v in r.publisher.values("dlq")]
    assert sorted(d.error_kind for d in dead) == ["inference_failed", "not_json"]
    assert sorted(r.products()) == ["p-2", "p-3"]
    assert r.consumer.committed_offsets == {r.consumer.tp(): 4}
    assert not r.loop.failed
    for v in r.publisher.values("out"):
        TagEvent.model_validate_json(v)  # the bytes we build are the contract


def test_publish_retries_until_acknowledged() -> None:
    r = rig(max_items=2)
    r.consumer.produce(product(0))
    r.consumer.produce(product(1))
    r.publisher.fail_next = 1
    r.run_all()
    assert r.publisher.resets == 1
    assert sorted(r.products()) == ["p-0", "p-1"]
    assert r.consumer.committed_offsets == {r.consumer.tp(): 2}


def test_readiness_recovers_after_a_transient_poll_error_without_a_scrape() -> None:
    r = rig()
    r.steps(1)
    assert r.health.ready and r.gauge("tagger_ready") == 1
    r.consumer.poll_errors = 1
    r.steps(1)
    assert not r.health.ready and r.gauge("tagger_ready") == 0
    r.steps(1)  # a quiet topic: no record, no publish; the next good poll is enough
    assert r.health.ready and r.gauge("tagger_ready") == 1


def test_readiness_follows_the_connection_on_a_quiet_topic() -> None:
    r = rig()
    r.consumer.is_connected = False  # kafka-python polls [] without raising while cut off
    r.steps(1)
    assert not r.health.ready and r.gauge("tagger_ready") == 0
    r.consumer.is_connected = True
    r.steps(1)
    assert r.health.ready


def test_lag_counts_consumed_but_uncommitted_records() -> None:
    r = rig(max_items=10)
    r.steps(1)
    r.produce(range(5))
    r.clock.advance(10)
    r.steps(1)  # polled (position 5) but nothing committed
    assert r.gauge("tagger_consumer_lag", partition="0") == 5
    r.run_all()
    r.clock.advance(10)
    r.steps(1)
    assert r.gauge("tagger_consumer_lag", partition="0") == 0


def test_cache_degraded_clears_on_a_quiet_topic() -> None:
    r = rig()
    r.cache.down = True
    r.consumer.produce(product(0))
    r.run_all()
    assert r.cache.degraded
    r.cache.down = False
    r.steps(1)
    assert not r.cache.degraded


def test_commit_rejected_after_a_rebalance_is_not_fatal() -> None:
    r = rig(max_items=2)
    r.consumer.produce(product(0))
    r.consumer.produce(product(1))
    r.consumer.reject_commits = True
    r.run_all()
    assert r.consumer.commit_log == [] and not r.loop.failed
    r.consumer.reject_commits = False
    r.steps(1)
    assert r.consumer.committed_offsets == {r.consumer.tp(): 2}


def test_records_fetched_in_the_poll_that_rebalanced_are_read_again() -> None:
    # Two rebalances inside one poll (join, then a second member joins and leaves): the records
    # that poll fetched arrive after a revoke and must be re-read, not dropped for good.
    r = rig(max_items=2)
    r.consumer.rebalance()
    r.produce(range(4))
    r.run_all()
    assert set(r.products()) == {f"p-{i}" for i in range(4)}
    assert r.consumer.committed_offsets == {r.consumer.tp(): 4}


def test_adaptive_batching_follows_the_load() -> None:
    r = rig(max_items=8, max_in_flight=2, max_wait_ms=1000)
    ex = r.manual
    r.consumer.produce(product(0))
    r.steps(2)
    assert len(ex.queue) == 1, "idle: a lone record goes at once"
    r.produce(range(1, 4))
    r.steps(2)
    assert len(ex.queue) == 1, "busy: records wait to fill a batch"
    ex.run_all()
    r.steps(2)
    assert len(ex.queue) == 1 and len(ex.queue[0][2][0]) == 3, "idle again: the three go as one batch"


def test_cache_hits_skip_batching_and_inference() -> None:
    r = rig(max_items=8, max_in_flight=2, max_wait_ms=1000)
    ex = r.manual
    r.consumer.produce(product(0, "seen before"))
    r.run_all()
    runs = r.engine.runs
    r.consumer.produce(product(1, "something new"))
    r.consumer.produce(product(2, "seen before"))  # a hit behind a miss
    r.steps(2)
    assert len(ex.queue) == 2, "the hit waited in the batcher"
    assert [type(i).__name__ for i in ex.queue[0][2][0]] == ["Tagged"]  # submitted first, no inference
    ex.run(0)
    r.steps(1)
    assert r.products() == ["p-0", "p-2"]
    assert r.consumer.committed_offsets == {r.consumer.tp(): 1}, "committed past the miss still in flight"
    ex.run_all()
    r.steps(1)
    assert r.consumer.committed_offsets == {r.consumer.tp(): 3}
    assert r.engine.runs == runs + 1 and r.engine.inferred[-1:] == ["something new"]


def test_a_huge_value_is_dead_lettered_within_the_broker_limit_and_the_partition_moves_on() -> None:
    # A 3 MB value (over max_message_bytes) and a 300 KB key: before the cap, its dead letter
    # (4 MB of base64) was refused and retried forever, and every record behind it was stuck.
    r = rig(max_items=4)
    r.publisher.max_message_bytes = 1_000_000  # a default Kafka broker's limit
    r.abort.deadline = r.clock.now() + 600  # a retry-forever bug ends as a failed batch, not a hang
    huge, key = b"x" * 3_000_000, b"k" * 300_000
    r.consumer.produce(product(0))
    r.consumer.produce(huge, key=key)
    r.consumer.produce(product(2))
    r.run_all()
    (dl_bytes,) = r.publisher.values("dlq")
    dl = DeadLetter.model_validate_json(dl_bytes)
    assert dl.error_kind == "too_large" and dl.offset == 1
    assert dl.truncated and dl.value_size == 3_000_000
    assert dl.value_sha256 == hashlib.sha256(huge).hexdigest()
    prefix = base64.b64decode(dl.value_b64)
    assert 0 < len(prefix) <= LimitSettings().max_dead_letter_value_bytes and huge.startswith(prefix)
    assert dl.key_truncated and dl.key_size == 300_000 and key.startswith(base64.b64decode(dl.key_b64 or ""))
    assert [k for t, k, _ in r.publisher.acked if t == "dlq"] == [None]  # the huge key is not the record key
    assert sorted(r.products()) == ["p-0", "p-2"]
    assert r.consumer.committed_offsets == {r.consumer.tp(): 3}
    assert not r.loop.failed


def test_a_small_value_is_carried_whole() -> None:
    r = rig(max_items=1)
    r.consumer.produce(b"\xffnot utf8", key=b"key-1")
    r.run_all()
    (dl,) = [DeadLetter.model_validate_json(v) for v in r.publisher.values("dlq")]
    assert base64.b64decode(dl.value_b64) == b"\xffnot utf8" and not dl.truncated and not dl.key_truncated
    assert [k for t, k, _ in r.publisher.acked if t == "dlq"] == [b"key-1"]


def test_a_record_kafka_refuses_as_too_large_is_dead_lettered_not_retried_forever() -> None:
    # The broker's limit can be lower than ours: a refusal for size is permanent for that record.
    r = rig(max_items=3)
    r.abort.deadline = r.clock.now() + 600
    r.publisher.max_message_bytes = 1_000
    r.consumer.produce(product(0))
    r.consumer.produce(product(1))
    r.consumer.produce(b"y" * 5_000)  # its dead letter carries ~6.7 KB of base64: refused
    r.run_all()
    dead = [DeadLetter.model_validate_json(v) for v in r.publisher.values("dlq")]
    assert [(d.offset, d.error_kind, d.value_b64, d.value_size) for d in dead] == [(2, "too_large", "", 5_000)]
    assert "refused by Kafka" in dead[0].error_message
    assert sorted(r.products()) == ["p-0", "p-1"]
    assert r.consumer.committed_offsets == {r.consumer.tp(): 3}
    assert r.publisher.resets == 0 and not r.loop.failed


class GatedEngine(FakeEngine):
    """A FakeEngine whose runs over a text containing `slow` wait until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def run(self, items: list[Any]) -> Any:
        if any("slow" in x.text for x in items):
            assert self.gate.wait(30), "test gate never opened"
        return super().run(items)


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait (in real time, bounded) for the batch threads to get somewhere."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _drain(r: Rig) -> None:
    _until(lambda: (r.loop.step(), not r.loop.in_flight and not len(r.loop.batcher))[1], "the batches to finish")


def test_concurrent_batches_publish_in_the_order_they_were_submitted() -> None:
    engine = GatedEngine()
    r = rig(max_items=2, max_in_flight=2, pool=True, engine=engine)
    r.consumer.produce(product("a", "slow red shirt"))
    r.produce(["b", "c", "d"])
    r.steps(2)  # [a, b] and [c, d] both running on the loop's two batch threads
    assert len(r.loop.in_flight) == 2
    _until(lambda: "red cotton shirt c" in engine.inferred, "batch 2 to infer")
    # batch 2 is tagged while batch 1 still waits for the model, but it does not publish before it
    assert r.publisher.values("out") == [] and r.publisher.acked == []
    engine.gate.set()
    _drain(r)
    assert r.products() == ["p-a", "p-b", "p-c", "p-d"]
    assert r.consumer.commit_log[-1] == {r.consumer.tp(): 4}


def test_a_batch_failing_before_it_publishes_does_not_hold_up_the_next() -> None:
    r = rig(max_items=2, max_in_flight=2, pool=True)
    r.consumer.produce(product("a", "POISON one"))
    r.consumer.produce(product("b", "POISON two"))  # every item fails alone: a fault, the batch fails
    r.produce(["c", "d"])
    r.steps(2)
    _until(lambda: all(f.done() for f in r.loop.in_flight.values()), "both batches")
    assert sorted(r.products()) == ["p-c", "p-d"], "the batch after the failed one never published"
    r.steps(1)
    assert r.loop.failed and r.consumer.commit_log == []


def test_cache_hits_go_out_in_batches_of_up_to_a_whole_poll() -> None:
    r = rig(max_items=2, max_in_flight=1)
    r.produce(range(20))
    r.loop.step()
    assert len(r.loop.batcher) == 4, "misses are polled no faster than the batch threads take them (2 x 2)"
    r.run_all()
    batches = r.gauge("tagger_batch_size_count")
    r.produce(range(20))  # the same products again: every one a cache hit
    r.run_all()
    assert r.engine.runs == 10, "a hit was inferred again"
    # The first poll after misses is bounded like misses (4), the next takes the other 16 at once.
    assert r.gauge("tagger_batch_size_count") == batches + 2
    assert r.gauge("tagger_batch_size_sum") == 40
    assert r.products()[20:] == [f"p-{i}" for i in range(20)]
    r.produce(range(100, 120))  # misses again: the first poll is a whole one (hits before), once
    r.loop.step()
    assert len(r.loop.batcher) == 20
    r.run_all()
    r.produce(range(200, 220))
    r.loop.step()
    assert len(r.loop.batcher) == 4
