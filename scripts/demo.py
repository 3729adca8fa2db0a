"""`make demo`: the whole path on local parts, from a fresh clone to printed tag events.

Starts a local Tansu broker and uses (or starts) Redis, trains or reuses a small model on the shared
Flipkart data, exports it, starts `tagger worker` as its own process, streams a sample of products
(plus a few malformed messages) through Kafka, prints the tag events, replays the same products to
show the Redis cache, then stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from exporter.data import bucket_of
from scripts.local_services import (
    create_topics,
    env_without,
    free_port,
    local_stack,
    stop_process,
    wait_worker_ready,
)
from scripts.model_cache import FLIPKART, REPO, ensure_model

log = logging.getLogger("demo")

MALFORMED: list[bytes] = [
    b"{not json",
    json.dumps({"product_id": "x-1"}).encode(),  # no title
    json.dumps({"product_id": "x-2", "title": "   "}).encode(),  # blank title
    b"\xff\xfe invalid utf-8",
]


def sample_products(path: Path, n: int) -> list[dict[str, str]]:
    """A deterministic sample from the held-out 20% (the same id-hash split as `tagger split`)."""
    out: list[dict[str, str]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if bucket_of(row["id"]) >= 20:
                continue
            event = {"product_id": row["id"], "title": row["title"]}
            if row.get("description"):
                event["description"] = row["description"]
            out.append(event)
            if len(out) == n:
                break
    return out


class Reader:
    """Reads tag events and dead letters from the start of both topics, across passes."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        from kafka import KafkaConsumer

        self.topics = topics
        self.consumer = KafkaConsumer(
            topics["output"],
            topics["dlq"],
            bootstrap_servers=bootstrap,
            group_id=f"demo-reader-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            consumer_timeout_ms=300,
        )

    def collect(self, want_ids: set[str], want_dead: int, timeout_s: float) -> tuple[list[dict], list[dict]]:
        events: list[dict] = []
        dead: list[dict] = []
        got: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while (got != want_ids or len(dead) < want_dead) and time.monotonic() < deadline:
            for msg in self.consumer:
                record = json.loads(msg.value)
                if msg.topic == self.topics["output"]:
                    events.append(record)
                    got.add(record["product_id"])
                else:
                    dead.append(record)
        return events, dead

    def close(self) -> None:
        self.consumer.close()


def stream(
    bootstrap: str, reader: Reader, products: list[dict[str, str]], malformed: list[bytes], timeout_s: float
) -> tuple[list[dict], list[dict], float]:
    """Produce products (+ malformed); return their tag events, dead letters and the seconds it took."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=262144)
    started = time.monotonic()
    for product in products:
        producer.send(reader.topics["input"], key=product["product_id"].encode(), value=json.dumps(product).encode())
    for raw in malformed:
        producer.send(reader.topics["input"], key=b"malformed", value=raw)
    producer.flush(timeout=30)
    producer.close()
    events, dead = reader.collect({p["product_id"] for p in products}, len(malformed), timeout_s)
    return events, dead, time.monotonic() - started


def print_events(products: list[dict[str, str]], events: list[dict], limit: int) -> None:
    titles = {p["product_id"]: p["title"] for p in products}
    for event in events[:limit]:
        title = titles.get(event["product_id"], "?")
        print(f"\n  {title[:90]}")
        for tag in event["tags"][:6]:
            print(f"      {tag['score']:.2f}  {tag['tag']}")
        if not event["tags"]:
            print("      (no tag over threshold)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=500, help="products to stream (default 500)")
    parser.add_argument("--work-dir", type=Path, default=REPO / ".demo", help="model cache (default .demo)")
    parser.add_argument("--data", type=Path, default=FLIPKART, help="training data (shared Flipkart file)")
    parser.add_argument("--max-minutes", type=float, default=3.0, help="training budget when no model exists")
    parser.add_argument("--show", type=int, default=8, help="tag events to print (default 8)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)

    print("== 1/4 model: train or reuse, export to ONNX")
    # Train on the 80% split only; the products streamed below come from the held-out 20%.
    from exporter.data import split, write_rows
    from schemas.training import load_rows

    train_file = args.work_dir / "data" / "train.jsonl"
    if not train_file.is_file():
        train_rows, _ = split(load_rows(args.data).rows, 20)
        write_rows(train_file, train_rows)
    _, model_dir = ensure_model(args.work_dir, data=train_file, max_minutes=args.max_minutes)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    labels = len(manifest["decisions"]["labels"])
    print(f"   model {model_dir} version {manifest.get('model_version')}, {labels} labels")

    print("== 2/4 local broker (Tansu) and Redis")
    run_id = uuid.uuid4().hex[:8]
    topics = {kind: f"demo.{kind}.{run_id}" for kind in ("input", "output", "dlq", "feedback", "review")}
    with local_stack() as (broker, cache):
        create_topics(broker.url, {topics["input"]: 4, topics["output"]: 4, topics["dlq"]: 1})
        create_topics(broker.url, {topics["feedback"]: 1, topics["review"]: 1})
        port = free_port()
        env = env_without("TAGGER_") | {
            "TAGGER_KAFKA__BOOTSTRAP_SERVERS": broker.url,
            "TAGGER_KAFKA__INPUT_TOPIC": topics["input"],
            "TAGGER_KAFKA__OUTPUT_TOPIC": topics["output"],
            "TAGGER_KAFKA__DLQ_TOPIC": topics["dlq"],
            "TAGGER_KAFKA__FEEDBACK_TOPIC": topics["feedback"],
            "TAGGER_KAFKA__REVIEW_TOPIC": topics["review"],
            "TAGGER_KAFKA__GROUP_ID": f"demo-{run_id}",
            "TAGGER_REDIS__URL": cache.url,
            "TAGGER_REDIS__KEY_PREFIX": f"demo:{run_id}:",
            "TAGGER_MODEL__PATH": str(model_dir),
            "TAGGER_HTTP__PORT": str(port),
        }
        print(f"   broker {broker.url}, redis {cache.url}; starting `tagger worker`")
        worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], env=env, cwd=REPO)
        try:
            wait_worker_ready(port, worker, timeout_s=120)
            products = sample_products(args.data, args.products)

            print(f"== 3/4 streaming {len(products)} products and {len(MALFORMED)} malformed messages")
            reader = Reader(broker.url, topics)
            events, dead, secs = stream(broker.url, reader, products, MALFORMED, timeout_s=300)
            print_events(products, events, args.show)
            fresh = sum(not e["cached"] for e in events)
            kinds = sorted({d.get("error_kind", "?") for d in dead})
            print(
                f"\n   {len(events)} tag events ({fresh} inferred) in {secs:.1f}s"
                f" = {len(events) / secs:.0f} events/s; {len(dead)} dead letters: {kinds}"
            )

            print("== 4/4 replaying the same products: served from the Redis cache")
            replayed, _, secs2 = stream(broker.url, reader, products, [], timeout_s=120)
            reader.close()
            hits = sum(e["cached"] for e in replayed)
            print(
                f"   {len(replayed)} tag events, {hits} cache hits ({hits / max(1, len(replayed)):.0%})"
                f" in {secs2:.1f}s = {len(replayed) / secs2:.0f} events/s"
            )
        finally:
            code = stop_process(worker, grace_s=60)
            started_redis = "" if cache.proc is None else " and Redis"
            print(f"   worker stopped (exit {code}); stopping the broker{started_redis}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
