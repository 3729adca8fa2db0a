"""Compose smoke client: runs in the worker image on the compose network (it has kafka-python).

Produces the product events in /smoke/products.json to the worker's input topic, then reads the
output topic until every product has a tag event or the deadline passes. Prints one JSON summary
line; exit 0 only when every product was tagged. `--produce-only` stops after producing.
Used by scripts/compose_smoke.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", default="kafka:9092")
    p.add_argument("--input-topic", default="products.new")
    p.add_argument("--output-topic", default="products.tags")
    p.add_argument("--products", default="/smoke/products.json")
    p.add_argument("--timeout-s", type=float, default=120.0)
    p.add_argument("--produce-only", action="store_true", help="produce and exit (the drain check)")
    args = p.parse_args()
    with open(args.products, encoding="utf-8") as f:
        products = json.load(f)
    wanted = {product["product_id"] for product in products}

    producer = KafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5, request_timeout_ms=10_000)
    t0 = time.monotonic()
    for product in products:
        producer.send(args.input_topic, key=product["product_id"].encode(), value=json.dumps(product).encode())
    producer.flush(timeout=30)
    producer.close(timeout=5)
    if args.produce_only:
        print(json.dumps({"produced": len(products), "seconds": round(time.monotonic() - t0, 1)}))
        return 0

    # A fresh group from the earliest offset: sees every event the worker published.
    consumer = KafkaConsumer(
        args.output_topic,
        bootstrap_servers=args.bootstrap,
        group_id=f"smoke-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
    )
    events: dict[str, dict] = {}
    bad: list[str] = []
    deadline = time.monotonic() + args.timeout_s
    while wanted - events.keys() and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for r in records:
                try:
                    event = json.loads(r.value)
                    pid = event["product_id"]
                except (ValueError, KeyError) as exc:
                    bad.append(f"{r.topic}[{r.partition}]@{r.offset}: {exc}")
                    continue
                if pid in wanted:
                    events[pid] = event
    consumer.close()
    versions = sorted({e.get("model_version", "") for e in events.values()})
    tagged = sum(1 for e in events.values() if e.get("tags"))
    sample = next((e for e in events.values() if e.get("tags")), next(iter(events.values()), None))
    summary = {
        "produced": len(products),
        "tag_events": len(events),
        "with_tags": tagged,
        "missing": sorted(wanted - events.keys())[:5],
        "unparseable": bad[:5],
        "model_versions": versions,
        "seconds": round(time.monotonic() - t0, 1),
        "sample": sample,
    }
    print(json.dumps(summary, ensure_ascii=False))
    return 0 if not (wanted - events.keys()) and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
