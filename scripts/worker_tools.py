"""A local `tagger worker` process and the topics around it: used by the end-to-end tests, the
benchmarks and the demo (so none of them imports another's code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from worker.compare import topic_reader

REPO = Path(__file__).resolve().parents[1]
FAST_GROUP = {"TAGGER_KAFKA__SESSION_TIMEOUT_MS": "6000", "TAGGER_KAFKA__HEARTBEAT_INTERVAL_MS": "1000"}


def produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes | None] | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=262_144)
    try:
        for i, v in enumerate(values):
            producer.send(topic, key=keys[i] if keys else None, value=v)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)


def read_all(bootstrap: str, topic: str, until: Callable[[list[Any]], bool], timeout_s: float = 120) -> list[Any]:
    """Read `topic` from the beginning (no group) until `until(messages)` or the timeout."""
    consumer = topic_reader(bootstrap, topic, consumer_timeout_ms=1000)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(out):
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
    finally:
        consumer.close()
    return out


def worker_topics(suffix: str, partitions: int) -> dict[str, int]:
    """Every topic a worker of `worker_env(..., suffix)` touches, to create before it starts (Tansu
    auto-creates a missing topic on any metadata request, and a first send to one can stall)."""
    one = {f"{kind}-{suffix}": 1 for kind in ("dlq", "fb", "rev")}
    return {f"in-{suffix}": partitions, f"out-{suffix}": partitions} | one


def worker_env(bootstrap: str, redis_url: str, model: Path, suffix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGER_")}
    env.update(FAST_GROUP)
    env.update(
        {
            "TAGGER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "TAGGER_KAFKA__INPUT_TOPIC": f"in-{suffix}",
            "TAGGER_KAFKA__OUTPUT_TOPIC": f"out-{suffix}",
            "TAGGER_KAFKA__DLQ_TOPIC": f"dlq-{suffix}",
            # Never the shared defaults: another test's feedback would become this worker's dead letters.
            "TAGGER_KAFKA__FEEDBACK_TOPIC": f"fb-{suffix}",
            "TAGGER_KAFKA__REVIEW_TOPIC": f"rev-{suffix}",
            "TAGGER_KAFKA__GROUP_ID": f"g-{suffix}",
            "TAGGER_REDIS__URL": redis_url,
            "TAGGER_REDIS__KEY_PREFIX": f"t-{suffix}:",
            "TAGGER_MODEL__PATH": str(model),
            "TAGGER_HTTP__PORT": "0",
            "TAGGER_LOG__JSON_FORMAT": "true",
        }
    )
    env.update(extra)
    return env


def served_worker_env(
    bootstrap: str, redis_url: str, model: Path, suffix: str, **extra: str
) -> tuple[dict[str, str], int]:
    """`worker_env` with the health and metrics server on a free port: (env, port)."""
    from scripts.local_services import free_port

    port = free_port()
    return worker_env(bootstrap, redis_url, model, suffix, TAGGER_HTTP__PORT=str(port), **extra), port


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker"], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )


def values(messages: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(m.value) for m in messages]
