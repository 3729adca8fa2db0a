"""The fair competitor: the batched consumer a competent engineer writes in an afternoon.

A kafka-python consumer with auto-commit off; per poll (`max_records=64`, the worker's max batch):
json-decode every record, one batched torch forward pass over the poll's texts (HF tokenizer with
padding, the same `TorchTagger` as the naive consumer), `producer.send` one tag event each, flush,
then a synchronous commit of the poll's offsets. At-least-once like the worker, but no cache, no
ONNX Runtime, no length bucketing, and Kafka I/O and inference never overlap.
"""

from __future__ import annotations

import json
import time

from bench.naive import Competitor, TorchTagger
from worker.contract import compose_text


def run_batched(
    c: Competitor, tagger: TorchTagger, n_messages: int, *, max_records: int = 64, timeout_s: float = 300
) -> dict[str, float]:
    """Consume `n_messages` (already in `input_topic`) a poll at a time; return timing.

    The clock starts at the first non-empty poll (group join excluded) and stops after the last
    commit, so `eps = n / elapsed` is the steady rate.
    """
    from kafka import KafkaProducer, OffsetAndMetadata, TopicPartition

    consumer = c.consumer(enable_auto_commit=False)
    producer = KafkaProducer(bootstrap_servers=c.bootstrap, linger_ms=5)
    done, polls, started = 0, 0, None
    deadline = time.monotonic() + timeout_s
    try:
        while done < n_messages and time.monotonic() < deadline:
            fetched = consumer.poll(timeout_ms=500, max_records=max_records)
            records = [m for msgs in fetched.values() for m in msgs]
            if not records:
                continue
            if started is None:
                started = time.perf_counter()
            events = [json.loads(m.value) for m in records]
            texts = [compose_text(e["title"], e.get("description")) for e in events]
            for event, tags in zip(events, tagger.tag(texts), strict=True):
                value = {"product_id": event["product_id"], "tags": [{"tag": t, "score": s} for t, s in tags]}
                producer.send(c.output_topic, key=event["product_id"].encode(), value=json.dumps(value).encode())
            producer.flush(timeout=60)
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for m in records:
                offsets[TopicPartition(m.topic, m.partition)] = OffsetAndMetadata(m.offset + 1, "", -1)
            consumer.commit(offsets)
            done += len(records)
            polls += 1
    finally:
        producer.close(timeout=10)
        consumer.close()
    return c.timing("batched", done, started, timeout_s) | {"polls": float(polls)}
