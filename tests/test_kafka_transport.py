"""The kafka-python transport (`worker.kafka_io`) against a real broker (Tansu): the Protocol's
semantics, and the kafka-python behaviour `worker.testing.FakeConsumer` reproduces."""

from __future__ import annotations

import time

from scripts.local_services import create_topics
from tests.kafka_helpers import produce
from worker.kafka_io import KafkaPublisher, KafkaPythonConsumer, connect_consumer
from worker.rebalance import RebalanceEvents
from worker.settings import KafkaSettings
from worker.transport import ConsumedRecord, TopicPartition


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
    s = KafkaSettings(
        bootstrap_servers=broker, group_id=f"g-{unique}", session_timeout_ms=6000, heartbeat_interval_ms=1000
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
        deadline = time.monotonic() + 30
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


def test_publisher_flush_reports_acknowledgement(broker: str, unique: str) -> None:
    topic = f"out-{unique}"
    create_topics(broker, {topic: 1})
    pub = KafkaPublisher(KafkaSettings(bootstrap_servers=broker))
    try:
        deliveries = [pub.send(topic, b"k", b"v%d" % i) for i in range(3)]
        assert pub.flush(10)
        assert all(d.is_done and d.succeeded() for d in deliveries)
    finally:
        pub.close(5)


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
