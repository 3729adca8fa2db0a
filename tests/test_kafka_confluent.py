"""The librdkafka transport (`worker.kafka_confluent`) against the real local broker (Tansu)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from scripts.local_services import create_topics, free_port, start_tansu
from worker.kafka_confluent import (
    ConfluentConsumer,
    ConfluentPublisher,
    DeliveryFailed,
    connect_consumer,
)
from worker.settings import KafkaSettings
from worker.transport import ConsumedRecord, TopicPartition, TransportError


class Recorder:
    """A RebalanceListener that notes each event with the thread it ran on."""

    def __init__(self) -> None:
        self.events: list[tuple[str, set[TopicPartition], int]] = []

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        self.events.append(("assigned", partitions, threading.get_ident()))

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self.events.append(("revoked", partitions, threading.get_ident()))

    def on_lost(self, partitions: set[TopicPartition]) -> None:
        self.events.append(("lost", partitions, threading.get_ident()))

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]


def settings(broker: str, unique: str, **extra: object) -> KafkaSettings:
    # 6000/1000: the group join on Tansu takes about half the session timeout (3 s).
    base = {
        "bootstrap_servers": broker,
        "group_id": f"g-{unique}",
        "client": "confluent",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
    }
    return KafkaSettings.model_validate({**base, **extra})


def produce_to(broker: str, topic: str, partition: int, values: list[bytes]) -> None:
    """Write with the other client (kafka-python), to an explicit partition."""
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=5)
    try:
        for v in values:
            producer.send(topic, value=v, partition=partition)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)


def poll_until(
    consumer: ConfluentConsumer, done: Callable[[list[ConsumedRecord]], bool], timeout_s: float = 30
) -> list[ConsumedRecord]:
    out: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done(out):
        out.extend(consumer.poll(0.2, 500))
    return out


def poll_for(consumer: ConfluentConsumer, seconds: float) -> list[ConsumedRecord]:
    out: list[ConsumedRecord] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out.extend(consumer.poll(0.1, 500))
    return out


def wait_assigned(consumer: ConfluentConsumer, n: int, timeout_s: float = 30) -> list[ConsumedRecord]:
    out: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(consumer.assignment()) != n:
        out.extend(consumer.poll(0.1, 500))
    assert len(consumer.assignment()) == n
    return out


def librdkafka_assignment(consumer: ConfluentConsumer) -> set[TopicPartition]:
    return {TopicPartition(tp.topic, tp.partition) for tp in consumer._c.assignment()}


@pytest.fixture
def consumers() -> Iterator[list[ConfluentConsumer]]:
    made: list[ConfluentConsumer] = []
    yield made
    for c in made:
        try:
            c.close(10)
        except TransportError:
            pass  # already closed by the test


def test_round_trip_produce_consume_commit(broker: str, unique: str, consumers: list[ConfluentConsumer]) -> None:
    topic = f"rt-{unique}"
    create_topics(broker, {topic: 2})
    s = settings(broker, unique)
    publisher = ConfluentPublisher(s)
    sent = {b'{"n":%d}' % i for i in range(500)}
    reports = [publisher.send(topic, b"k%d" % i, v) for i, v in enumerate(sorted(sent))]
    assert publisher.flush(30)
    assert all(r.succeeded() for r in reports)
    publisher.close(10)

    consumer = connect_consumer(s)
    consumers.append(consumer)
    consumer.subscribe([topic], Recorder())
    got = poll_until(consumer, lambda out: len(out) >= 500)
    assert {r.value for r in got} == sent and len(got) == 500
    ends: dict[TopicPartition, int] = {}
    for r in got:
        assert r.timestamp_ms is not None and r.timestamp_ms > 0
        assert r.offset == ends.get(r.tp, 0), "records of a partition arrive in offset order, no gaps"
        ends[r.tp] = r.offset + 1
    assert set(ends) == {TopicPartition(topic, 0), TopicPartition(topic, 1)}

    consumer.commit(ends, timeout_s=10)
    assert consumer.committed(ends.keys(), timeout_s=10) == ends
    for tp, end in ends.items():
        assert consumer.highwater(tp) == end  # from fetch responses, unlike ListOffsets on Tansu


def test_committed_offsets_honoured_by_the_next_consumer(
    broker: str, unique: str, consumers: list[ConfluentConsumer]
) -> None:
    topic = f"co-{unique}"
    create_topics(broker, {topic: 2})
    for p in (0, 1):
        produce_to(broker, topic, p, [b"%d-%d" % (p, i) for i in range(50)])
    s = settings(broker, unique)
    first = connect_consumer(s)
    first.subscribe([topic], Recorder())
    assert len(poll_until(first, lambda out: len(out) >= 100)) == 100
    first.commit({TopicPartition(topic, 0): 20, TopicPartition(topic, 1): 35}, timeout_s=10)
    first.close(10)

    second = connect_consumer(s)
    consumers.append(second)
    second.subscribe([topic], Recorder())
    got = poll_until(second, lambda out: len(out) >= 45)
    assert len(poll_for(second, 1.0)) == 0, "nothing before the committed offsets is delivered again"
    by_part = {p: [r.offset for r in got if r.partition == p] for p in (0, 1)}
    assert by_part == {0: list(range(20, 50)), 1: list(range(35, 50))}


def test_pause_stops_and_resume_restarts_delivery_without_loss(
    broker: str, unique: str, consumers: list[ConfluentConsumer]
) -> None:
    topic = f"pr-{unique}"
    create_topics(broker, {topic: 2})
    produce_to(broker, topic, 0, [b"a%d" % i for i in range(2000)])
    consumer = connect_consumer(settings(broker, unique, max_poll_records=100))
    consumers.append(consumer)
    consumer.subscribe([topic], Recorder())
    p0 = TopicPartition(topic, 0)
    got = wait_assigned(consumer, 2)
    got += poll_until(consumer, lambda out: len(out) > 0)
    assert 0 < len(got) < 2000, "paused mid-partition, with records already fetched and queued"
    consumer.pause([p0])
    assert consumer.paused() == {p0}
    produce_to(broker, topic, 1, [b"b%d" % i for i in range(10)])
    during = poll_for(consumer, 2.0)
    assert {r.partition for r in during} == {1} and len(during) == 10, "no p0 record while paused"
    # Records fetched while paused are held, bounded: the cap (max_poll_records) plus one poll of
    # 500; then librdkafka stops fetching p0.
    assert 0 < len(consumer._held[p0]) <= 100 + 500

    consumer.resume([p0])
    assert consumer.paused() == set()
    first = consumer.poll(0.0, 500)
    assert first and {r.tp for r in first} == {p0}, "held records come at once, no refetch after resume"
    got += first
    got += poll_until(consumer, lambda out: len(got) + len(out) >= 2000)
    offsets = [r.offset for r in got if r.tp == p0]
    assert offsets == list(range(2000)), "resumed exactly where the application stopped"


def test_rebalance_splits_partitions_with_callbacks_on_the_poll_thread(
    broker: str, unique: str, consumers: list[ConfluentConsumer]
) -> None:
    topic = f"rb-{unique}"
    create_topics(broker, {topic: 4})
    s = settings(broker, unique, max_poll_records=10)
    first, first_events = connect_consumer(s), Recorder()
    consumers.append(first)
    first.subscribe([topic], first_events)
    wait_assigned(first, 4)
    everything = {TopicPartition(topic, p) for p in range(4)}
    first.pause(everything)  # a full worker: all paused when the second member arrives
    for tp in everything:  # enough to hold 10 per partition: librdkafka pauses them too
        produce_to(broker, topic, tp.partition, [b"early"] * 30)
    assert poll_for(first, 1.0) == []

    # One consumer per thread (polled alternately from one thread, the group never settles).
    stop, second_owned, second_records = threading.Event(), [set[TopicPartition]()], [0]

    def run_second() -> None:
        second = connect_consumer(s)
        second.subscribe([topic], Recorder())
        while not stop.is_set():
            second_records[0] += len(second.poll(0.1, 500))
            second_owned[0] = second.assignment()
        second.close(10)

    thread = threading.Thread(target=run_second)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (len(first.assignment()) == 2 and len(second_owned[0]) == 2):
            first.poll(0.1, 500)
        kept = first.assignment()
        assert kept == librdkafka_assignment(first), "the cached assignment is librdkafka's"
        assert len(kept) == 2 and kept.isdisjoint(second_owned[0]) and kept | second_owned[0] == everything
        revoked = [e for e in first_events.events if e[0] == "revoked"]
        assert revoked and revoked[0][1] == everything
        assert {e[2] for e in first_events.events} == {threading.get_ident()}, "callbacks ran on the poll thread"
        assert first.paused() == kept, "partitions kept through a rebalance stay paused (as kafka-python)"
    finally:
        stop.set()
        thread.join(timeout=30)

    # The second member leaves: its partitions come back to the first one unpaused, unlike
    # librdkafka's own behaviour (its pause flag outlives the revocation).
    got = wait_assigned(first, 4)
    assert first.assignment() == librdkafka_assignment(first) == everything
    assert first.paused() == kept
    returned = everything - kept
    for tp in everything:
        produce_to(broker, topic, tp.partition, [b"x"])
    got += poll_for(first, 3.0)
    assert {r.tp for r in got} == returned and len(got) == 2 * 31, "returned partitions read from the start"
    first.resume(kept)
    got = poll_until(first, lambda out: {r.tp for r in out} == kept)
    assert {r.tp for r in got} == kept


def test_delivery_failures_surface_as_failed_deliveries(broker: str, unique: str) -> None:
    topic = f"df-{unique}"
    create_topics(broker, {topic: 1})
    publisher = ConfluentPublisher(settings(broker, unique))
    ok = publisher.send(topic, None, b"fine")
    too_big = publisher.send(topic, None, b"x" * (5 * 1_048_576))  # message.max.bytes is 4 MiB
    assert too_big.is_done and isinstance(too_big.exception, DeliveryFailed)
    assert "MSG_SIZE_TOO_LARGE" in str(too_big.exception)
    assert publisher.flush(30) and ok.succeeded()
    publisher.close(10)
    closed = publisher.send(topic, None, b"late")
    assert closed.is_done and not closed.succeeded() and isinstance(closed.exception, DeliveryFailed)


def test_warm_up_connects_ahead_of_the_first_send_and_never_raises(broker: str, unique: str) -> None:
    topic = f"warm-{unique}"
    create_topics(broker, {topic: 2})
    publisher = ConfluentPublisher(settings(broker, unique))
    publisher.warm([topic], timeout_s=10)
    assert publisher._producer is not None, "the client exists before the first batch"
    assert len(publisher._producer.list_topics(topic, timeout=0.5).topics[topic].partitions) == 2
    report = publisher.send(topic, None, b"after warm-up")
    assert publisher.flush(30) and report.succeeded()
    publisher.close(10)
    publisher.warm([topic], timeout_s=1)  # closed: logged, not raised
    nowhere = ConfluentPublisher(settings(f"127.0.0.1:{free_port()}", unique))
    nowhere.warm([topic], timeout_s=0.5)  # unreachable: logged, not raised
    nowhere.close(0.5)


def test_unacknowledged_records_fail_after_the_produce_timeout(unique: str) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    publisher = ConfluentPublisher(settings(nobody, unique, produce_timeout_s=1.0))
    report = publisher.send(f"t-{unique}", None, b"lost")
    assert publisher.flush(20), "the report arrives (as a failure) within the produce timeout"
    assert isinstance(report.exception, DeliveryFailed) and "MSG_TIMED_OUT" in str(report.exception)
    publisher.close(1)


def test_abort_cuts_a_flush_short(unique: str) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    abort = threading.Event()
    publisher = ConfluentPublisher(settings(nobody, unique, produce_timeout_s=60.0), abort=abort)
    report = publisher.send(f"t-{unique}", None, b"stuck")
    assert not publisher.flush(0.3) and not report.is_done
    abort.set()
    started = time.monotonic()
    assert not publisher.flush(60)
    assert time.monotonic() - started < 5, "returned on the abort, not after the 60 s budget"
    publisher.close(0.5)
    assert report.is_done and not report.succeeded(), "closing fails what was never delivered"


def test_unreachable_cluster_and_logs_go_to_our_logger(
    unique: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    s = settings(nobody, unique, bootstrap_timeout_s=1.0)
    with pytest.raises(TransportError, match="connect"):
        connect_consumer(s)
    consumer = ConfluentConsumer(s)
    with caplog.at_level(logging.INFO, logger="worker.kafka_confluent"):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and consumer.connected():
            consumer.poll(0.1, 10)
        assert not consumer.connected()
        consumer.close(5)
    assert any(r.name == "worker.kafka_confluent.librdkafka" and "Connect to" in r.getMessage() for r in caplog.records)
    assert "Connect to" not in capfd.readouterr().err, "librdkafka printed to stderr"


def test_idempotent_producer_recovers_from_a_broker_restart_by_reset(tmp_path: Path, unique: str) -> None:
    svc = start_tansu(log_dir=tmp_path)
    port = int(svc.url.rsplit(":", 1)[1])
    topic = f"ip-{unique}"
    try:
        create_topics(svc.url, {topic: 1})
        publisher = ConfluentPublisher(settings(svc.url, unique, produce_timeout_s=3.0))
        before = publisher.send(topic, None, b"before")
        assert publisher.flush(10) and before.succeeded()
        svc.stop()
        for _ in range(40):  # the same port: a just-released port can refuse for a moment
            try:
                svc = start_tansu(log_dir=tmp_path, port=port)
                break
            except RuntimeError:
                time.sleep(0.25)
        create_topics(svc.url, {topic: 1})  # memory storage: the topic went with the old broker
        # What the publish loop does: send, flush, and on failure reset the client and resend.
        attempts: list[bool] = []
        for _ in range(3):
            reports = [publisher.send(topic, None, b"after-%d" % i) for i in range(10)]
            publisher.flush(10)
            attempts.append(all(r.succeeded() for r in reports))
            if attempts[-1]:
                break
            publisher.reset()
        assert attempts[-1], f"delivered after a reset (attempts: {attempts})"
        publisher.close(5)
    finally:
        svc.stop()


def test_broker_loss_bounds_commit_reports_lost_partitions_and_disconnects(
    tmp_path: Path, unique: str, consumers: list[ConfluentConsumer]
) -> None:
    svc = start_tansu(log_dir=tmp_path)
    topic = f"bl-{unique}"
    try:
        create_topics(svc.url, {topic: 2})
        consumer, events = connect_consumer(settings(svc.url, unique)), Recorder()
        consumers.append(consumer)
        consumer.subscribe([topic], events)
        wait_assigned(consumer, 2)
        consumer.commit({TopicPartition(topic, 0): 0}, timeout_s=10)
        assert consumer.connected()
    finally:
        svc.stop()
    started = time.monotonic()
    with pytest.raises(TransportError):
        consumer.commit({TopicPartition(topic, 0): 1}, timeout_s=2.0)  # librdkafka's own has no timeout
    assert time.monotonic() - started < 4
    deadline = time.monotonic() + 30  # the session (6 s) expires without the coordinator
    while time.monotonic() < deadline and "lost" not in events.kinds():
        consumer.poll(0.2, 10)
    assert "lost" in events.kinds() and not consumer.connected()
    lost = next(e for e in events.events if e[0] == "lost")
    assert lost[1] == {TopicPartition(topic, 0), TopicPartition(topic, 1)} and lost[2] == threading.get_ident()


def test_sasl_tls_settings_map_to_librdkafka_properties_it_accepts() -> None:
    from confluent_kafka import Producer

    from worker.kafka_confluent import common_config, consumer_config, producer_config

    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if not ca.is_file():
        pytest.skip("no system CA bundle to point ssl.ca.location at")
    s = KafkaSettings.model_validate(
        {
            "bootstrap_servers": "b1:9093, b2:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "tagger",
            "sasl_password": "s3cret",
            "ssl_cafile": str(ca),
            "client": "confluent",
        }
    )
    cfg = common_config(s)
    assert cfg["bootstrap.servers"] == "b1:9093,b2:9093"
    assert cfg["security.protocol"] == "sasl_ssl"
    assert (cfg["sasl.mechanism"], cfg["sasl.username"], cfg["sasl.password"]) == ("SCRAM-SHA-512", "tagger", "s3cret")
    assert cfg["ssl.ca.location"] == str(ca)
    assert producer_config(s)["enable.idempotence"] is True and producer_config(s)["acks"] == "all"
    assert consumer_config(s)["enable.auto.commit"] is False
    # librdkafka validates names and values when the client is built (no connection needed).
    Producer(producer_config(s)).close()
