"""The kafka-python transport (`worker.kafka_io`) against a real broker (Tansu): the Protocol's
semantics, and the kafka-python behaviour `worker.testing.FakeConsumer` reproduces."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import TopicPartition as KafkaTP

from scripts.local_services import create_topics
from tests.kafka_helpers import produce
from worker.kafka_io import KafkaPublisher, KafkaPythonConsumer, connect_consumer
from worker.loop import build_loop
from worker.rebalance import RebalanceEvents
from worker.settings import KafkaSettings, load_settings
from worker.testing import FakeCache, FakeClock, FakeEngine, FakePublisher
from worker.transport import ConsumedRecord, TopicPartition, TransportError, is_too_large


def _poll_until(consumer: KafkaPythonConsumer, n: int, timeout_s: float = 30) -> list[ConsumedRecord]:
    out: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out.extend(consumer.poll(0.2, 500))
    return out


def test_transport_against_tansu(broker: str, unique: str) -> None:
    topic, other = f"in-{unique}", f"in2-{unique}"
    create_topics(broker, {topic: 1, other: 1})
    produce(broker, topic, [b"v%d" % i for i in range(6)])
    # a long session: on a loaded machine a 6 s session can expire mid-test (then the partitions are
    # lost, not revoked, and nothing of them is kept)
    s = KafkaSettings(
        bootstrap_servers=broker, group_id=f"g-{unique}", session_timeout_ms=20_000, heartbeat_interval_ms=1000
    )
    tp = TopicPartition(topic, 0)
    events = RebalanceEvents()
    c = connect_consumer(s)
    try:
        c.subscribe([topic], events)
        got = _poll_until(c, 6)
        assert [r.value for r in got] == [b"v%d" % i for i in range(6)]
        assert got[0].tp == tp and got[0].timestamp_ms
        assert ("assigned", frozenset({tp})) in events.drain()
        assert c.highwater(tp) == 6 and c.connected()

        c.commit({tp: 4}, 5)
        assert c.committed([tp], 5) == {tp: 4}

        # What FakeConsumer models: a partition kept across a rebalance keeps its paused flag and
        # its position in kafka-python (here the member subscribes to one more topic).
        c.pause({tp})
        c.subscribe([topic, other], events)
        deadline = time.monotonic() + 90
        seen: list[str] = []
        while time.monotonic() < deadline and "assigned" not in seen[1:]:
            c.poll(0.2, 500)
            seen += [kind for kind, _ in events.drain()]
        assert seen[:2] == ["revoked", "assigned"], seen
        assert tp in c.paused(), "kafka-python cleared the paused flag of a kept partition"

        c.seek(tp, 4)
        c.resume({tp})
        again = _poll_until(c, 2)
        assert [(r.offset, r.value) for r in again] == [(4, b"v4"), (5, b"v5")]
    finally:
        c.close(5)


@pytest.fixture
def out_publisher(broker: str, unique: str) -> Iterator[tuple[KafkaPublisher, str]]:
    """A publisher on the test broker and a fresh one-partition topic."""
    topic = f"out-{unique}"
    create_topics(broker, {topic: 1})
    pub = KafkaPublisher(KafkaSettings(bootstrap_servers=broker))
    yield pub, topic
    pub.close(5)


def test_publisher_flush_reports_acknowledgement(out_publisher: tuple[KafkaPublisher, str]) -> None:
    pub, topic = out_publisher
    deliveries = [pub.send(topic, b"k", b"v%d" % i) for i in range(3)]
    assert pub.flush(10)
    assert all(d.is_done and d.succeeded() for d in deliveries)


def test_warm_up_learns_the_topic_before_the_first_send(out_publisher: tuple[KafkaPublisher, str]) -> None:
    pub, topic = out_publisher
    pub.warm([topic], timeout_s=10)
    assert pub._producer is not None and pub._producer._metadata.partitions_for_topic(topic) == {0}
    delivery = pub.send(topic, b"k", b"v")
    assert pub.flush(10) and delivery.succeeded()


def test_a_record_over_the_size_limit_fails_alone_and_permanently(out_publisher: tuple[KafkaPublisher, str]) -> None:
    # Before: send() raised for the whole batch and the loop retried it forever.
    pub, topic = out_publisher
    small, huge = pub.send(topic, b"k", b"small"), pub.send(topic, b"k", b"x" * 5_000_000)
    assert pub.flush(10)
    assert small.is_done and small.succeeded()
    assert huge.is_done and not huge.succeeded() and is_too_large(huge.exception)


def test_connected_turns_false_when_the_broker_goes_away(unique: str) -> None:
    # kafka-python's poll returns [] without raising while every broker is down: readiness must
    # come from somewhere else (the group heartbeat's age).
    from scripts.local_services import start_tansu

    svc = start_tansu()
    s = KafkaSettings(
        bootstrap_servers=svc.url, group_id=f"g-{unique}", session_timeout_ms=2000, heartbeat_interval_ms=300
    )
    try:
        create_topics(svc.url, {f"q-{unique}": 1})
        c = connect_consumer(s)
        c.subscribe([f"q-{unique}"], RebalanceEvents())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not c.assignment():
            c.poll(0.2, 10)
        assert c.assignment() and c.connected()
        svc.stop()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and c.connected():
            assert c.poll(0.2, 10) == []
        assert not c.connected()
        c.close(1)
    finally:
        svc.stop()


def test_producer_close_with_a_frozen_broker_keeps_to_its_timeout(unique: str) -> None:
    # Before: kafka-python's close raised at its flush timeout and left the client running; its
    # __del__ then blocked another second (the drain overran its budget in the fault suite).
    import gc
    import os
    import signal

    from scripts.local_services import start_tansu

    svc = start_tansu()
    assert svc.proc is not None
    topic = f"out-{unique}"
    try:
        create_topics(svc.url, {topic: 1})
        pub = KafkaPublisher(KafkaSettings(bootstrap_servers=svc.url))
        assert pub.flush(10) and pub.send(topic, b"k", b"before") is not None and pub.flush(10)
        os.kill(svc.proc.pid, signal.SIGSTOP)  # silent: connections open, nothing answers
        pending = pub.send(topic, b"k", b"while frozen")
        t0 = time.monotonic()
        with pytest.raises(TransportError):
            pub.close(1.0)
        del pub
        gc.collect()
        assert time.monotonic() - t0 < 1.6
        assert pending.is_done and not pending.succeeded()
    finally:
        os.kill(svc.proc.pid, signal.SIGCONT)
        svc.stop()


def test_rebalance_while_paused_with_a_stuck_batch_loses_nothing(broker: str, unique: str) -> None:
    """The real client and broker under the real loop: partitions paused behind a stuck batch, a
    second member joins; afterwards the partition this member keeps is not paused and every one
    of its records is tagged and committed (kafka-python keeps the paused flag and the position)."""
    import threading

    from kafka import KafkaProducer

    from worker.clock import RealClock
    from worker.loop import build_loop
    from worker.settings import BatchingSettings, ShutdownSettings, load_settings
    from worker.testing import FakeCache, FakeClock, FakeEngine, FakePublisher

    topic = f"in-{unique}"
    create_topics(broker, {topic: 2})
    producer = KafkaProducer(bootstrap_servers=broker)
    for i in range(20):
        value = b'{"product_id": "p-%d", "title": "product number %d"}' % (i, i)
        producer.send(topic, value=value, partition=i % 2)
    producer.flush(30)
    producer.close(5)
    k = KafkaSettings(
        bootstrap_servers=broker,
        input_topic=topic,
        group_id=f"g-{unique}",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        commit_interval_ms=0,
    )
    gate = threading.Event()
    engine, cache = FakeEngine(), FakeCache()
    publisher = FakePublisher(FakeClock())
    publisher.stall = lambda value: not gate.is_set()
    publisher.on_stall = lambda: gate.wait(0.05)
    consumer = connect_consumer(k)
    settings = load_settings(
        kafka=k,
        batching=BatchingSettings(max_items=2, max_wait_ms=0, max_in_flight=1),
        shutdown=ShutdownSettings(drain_timeout_s=10),
    )
    loop = build_loop(settings, engine, cache, lambda: consumer, publisher, RealClock())
    stop = loop.stop
    runner = threading.Thread(target=loop.run)
    runner.start()
    other = connect_consumer(k)
    other_stop = threading.Event()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (consumer.paused() and consumer.paused() == consumer.assignment()):
            time.sleep(0.1)
        assert consumer.paused() and consumer.paused() == consumer.assignment(), "never paused behind the batch"

        def second_member() -> None:
            other.subscribe([topic], RebalanceEvents())
            while not other_stop.is_set():
                other.poll(0.2, 1)  # holds its partition; never commits

        member = threading.Thread(target=second_member)
        member.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(consumer.assignment()) != 1:
            time.sleep(0.1)
        kept = consumer.assignment()
        assert len(kept) == 1, "the second member never got a partition"
        gate.set()  # the stuck batch goes through now
        (tp,) = kept
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and consumer.committed([tp], 5) != {tp: 10}:
            time.sleep(0.2)
        assert consumer.committed([tp], 5) == {tp: 10}
        assert not consumer.paused(), "a kept partition stayed paused"
        tagged = {json_id(v) for v in publisher.values(k.output_topic)}
        assert {f"p-{i}" for i in range(tp.partition, 20, 2)} <= tagged, "a record was committed without a tag event"
    finally:
        gate.set()
        stop.set()
        runner.join(30)
        other_stop.set()
        if "member" in locals():
            member.join(10)
        other.close(5)


def json_id(value: bytes) -> str:
    import json

    return str(json.loads(value)["product_id"])


class SilentBrokerClient:
    """kafka-python's `KafkaConsumer` as the adapter sees it, on a fake clock: every poll waits its
    timeout and returns nothing (a quiet topic), and a heartbeat is answered every second until
    `silent` (then the last one sent grows old, as when the broker stops answering)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.polls, self.silent, self.heartbeat_at = clock, 0, False, clock.now()

    def subscribe(self, topics: list[str], listener: Any) -> None:
        listener.on_partitions_assigned([KafkaTP("in", 0)])

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        self.polls += 1
        self.clock.advance(timeout_ms / 1000)
        return {}

    def metrics(self) -> dict[str, dict[str, float]]:
        if not self.silent and self.clock.now() - self.heartbeat_at >= 1.0:
            self.heartbeat_at = self.clock.now()
        return {"consumer-coordinator-metrics": {"last-heartbeat-seconds-ago": self.clock.now() - self.heartbeat_at}}

    def assignment(self) -> set[KafkaTP]:
        return {KafkaTP("in", 0)}

    def paused(self) -> set[KafkaTP]:
        return set()

    def highwater(self, tp: KafkaTP) -> None:
        return None

    def committed(self, tp: KafkaTP, timeout_ms: int) -> None:
        return None


def test_the_loop_stops_polling_back_to_back_within_seconds_of_a_silent_broker() -> None:
    # While a fetch hangs on a silent broker, kafka-python busy-waits through every poll: the
    # fault suite's 10 s blackhole cost 9.6 CPU-s per 20 s. Before: the adapter reported the
    # broker away only after the session timeout (6 s), polling ~20 times a second until then.
    clock = FakeClock()
    client = SilentBrokerClient(clock)
    k = KafkaSettings(input_topic="in", session_timeout_ms=6000, heartbeat_interval_ms=1000, poll_timeout_ms=50)
    consumer = KafkaPythonConsumer(client, k, now=clock.now)  # a stand-in for KafkaConsumer
    loop = build_loop(load_settings(kafka=k), FakeEngine(), FakeCache(), lambda: consumer, FakePublisher(clock), clock)
    assert loop.start()

    def polls_in(seconds: float) -> int:
        start, polls = clock.now(), client.polls
        while clock.now() - start < seconds:
            loop.step()
        return client.polls - polls

    assert polls_in(5) >= 90  # a healthy quiet topic: one poll per poll timeout
    client.silent = True
    assert polls_in(10) <= 70  # about 2 s of polls at full rate, then one a second
    assert not loop.health.kafka_ok
    client.silent = False
    assert polls_in(3) >= 50 and loop.health.kafka_ok  # back at once
