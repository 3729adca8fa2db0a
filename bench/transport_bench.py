"""Raw transport throughput: each Kafka client's adapter (`worker.transport` Protocols) on Tansu.

No model, no Redis, no decode: the I/O floor under the worker's cache-hit path. Per transport:

1. produce: N 200-byte JSON records into a fresh input topic through the transport's Publisher
   (send all, then flush) -> `produce_eps_<client>`;
2. relay: a group consumer reads them back and, per poll, sends one ~200-byte record per input
   record to an output topic, flushes (waits for every delivery report) and commits the polled
   offsets at most every `commit_interval_ms`, as the worker does -> `transport_eps_<client>`,
   counted from the first record polled (the group join is excluded) to the last commit;
3. relay with backpressure: the same, but every partition is paused while a poll's records are
   sent and flushed and resumed afterwards (what the worker does when its batches back up)
   -> `transport_paused_eps_<client>`.

    python -m bench.transport_bench [--records 200000] [--clients kafka-python,confluent]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from scripts.local_services import create_topics, start_tansu
from worker.settings import KafkaSettings
from worker.transport import Consumer, Publisher, TopicPartition

log = logging.getLogger("bench.transport")
CLIENTS = ("kafka-python", "confluent")


def transport(s: KafkaSettings) -> tuple[Callable[[KafkaSettings], Consumer], Publisher]:
    if s.client == "confluent":
        from worker.kafka_confluent import ConfluentPublisher
        from worker.kafka_confluent import connect_consumer as connect_confluent

        return connect_confluent, ConfluentPublisher(s)
    from worker.kafka_io import KafkaPublisher, connect_consumer

    return connect_consumer, KafkaPublisher(s)


def record(i: int) -> bytes:
    """A 200-byte product-event-like JSON record."""
    head = json.dumps({"product_id": f"p{i:09d}", "title": "Stainless steel water bottle 750 ml"})
    pad = 200 - len(head) - len(',"description":""}') + 1
    return (head[:-1] + ',"description":"' + "x" * pad + '"}').encode()


class _Quiet:
    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        log.info("assigned %d partitions", len(partitions))

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        pass

    def on_lost(self, partitions: set[TopicPartition]) -> None:
        pass


def run_one(bootstrap: str, client: str, n: int, partitions: int) -> dict[str, float]:
    suffix = uuid.uuid4().hex[:8]
    src, dst = f"tb-in-{suffix}", f"tb-out-{suffix}"
    create_topics(bootstrap, {src: partitions, dst: partitions})
    s = settings(bootstrap, client, f"tb-{suffix}")
    connect, publisher = transport(s)
    values = [record(i) for i in range(n)]
    keys = [b"p%09d" % i for i in range(n)]

    started = time.perf_counter()
    reports = [publisher.send(src, k, v) for k, v in zip(keys, values, strict=True)]
    if not publisher.flush(120):
        raise RuntimeError(f"{client}: produce did not finish")
    produce_s = time.perf_counter() - started
    if not all(r.succeeded() for r in reports):
        raise RuntimeError(f"{client}: {sum(not r.succeeded() for r in reports)} records not delivered")
    del reports
    relay_s = relay(connect, publisher, s, src, dst, n, pause=False)
    paused_s = relay(connect, publisher, settings(bootstrap, client, f"tbp-{suffix}"), src, dst, n, pause=True)
    publisher.close(10)
    log.info("%s: produce %.1f s, relay %.1f s, relay with backpressure %.1f s", client, produce_s, relay_s, paused_s)
    return {"produce_eps": n / produce_s, "transport_eps": n / relay_s, "transport_paused_eps": n / paused_s}


def settings(bootstrap: str, client: str, group: str) -> KafkaSettings:
    return KafkaSettings.model_validate(
        {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "client": client,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "fetch_max_wait_ms": 10,  # as bench/run.py: Tansu otherwise holds empty fetches
        }
    )


def relay(
    connect: Callable[[KafkaSettings], Consumer],
    publisher: Publisher,
    s: KafkaSettings,
    src: str,
    dst: str,
    n: int,
    pause: bool,
) -> float:
    """Seconds from the first record polled to the commit of the n-th."""
    consumer = connect(s)
    consumer.subscribe([src], _Quiet())
    seen, first, commits = 0, None, 0
    spent = dict.fromkeys(("poll", "send", "flush", "commit"), 0.0)
    pending: dict[TopicPartition, int] = {}
    next_commit = 0.0
    interval = s.commit_interval_ms / 1000
    deadline = time.monotonic() + 300
    while seen < n and time.monotonic() < deadline:
        t0 = time.perf_counter()
        batch = consumer.poll(s.poll_timeout_ms / 1000, s.max_poll_records)
        if not batch:
            continue
        t1 = time.perf_counter()
        if first is None:
            first = t0
        else:
            spent["poll"] += t1 - t0
        if pause:
            consumer.pause(consumer.assignment())
        out = [publisher.send(dst, r.key, r.value or b"") for r in batch]
        t2 = time.perf_counter()
        if not publisher.flush(s.produce_timeout_s) or not all(d.succeeded() for d in out):
            raise RuntimeError(f"{s.client}: relay deliveries failed")
        t3 = time.perf_counter()
        spent["send"] += t2 - t1
        spent["flush"] += t3 - t2
        if pause:
            consumer.resume(consumer.assignment())
        for r in batch:
            pending[r.tp] = r.offset + 1
        seen += len(batch)
        now = time.monotonic()
        if now >= next_commit or seen >= n:
            consumer.commit(pending, timeout_s=10)
            commits += 1
            spent["commit"] += time.monotonic() - now
            next_commit = now + interval
    elapsed = time.perf_counter() - (first or time.perf_counter())
    consumer.close(10)
    if seen < n:
        raise RuntimeError(f"{s.client}: relayed only {seen} of {n}")
    log.info(
        "%s relay%s: %.1f s (%s), %d commits",
        s.client,
        " with backpressure" if pause else "",
        elapsed,
        ", ".join(f"{k} {v:.1f} s" for k, v in spent.items()),
        commits,
    )
    return elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--clients", default=",".join(CLIENTS))
    p.add_argument("--bootstrap", help="an existing broker (default: start a Tansu)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    svc = None if args.bootstrap else start_tansu()
    bootstrap = args.bootstrap or (svc.url if svc else "")
    result: dict[str, Any] = {"records": args.records, "record_bytes": len(record(0))}
    try:
        for client in args.clients.split(","):
            name = client.replace("-", "_")
            for key, value in run_one(bootstrap, client, args.records, args.partitions).items():
                result[f"{key}_{name}"] = round(value)
    finally:
        if svc is not None:
            svc.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
