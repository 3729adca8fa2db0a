"""The benchmark's measurements, one function per scenario (see bench/run.py for the list)."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    Bench,
    cycle,
    event_bytes,
    group_timeouts,
    produce_burst,
    produce_paced,
    stage_breakdown,
    tag_timings,
)
from bench.naive import Competitor
from scripts.local_services import create_topics
from scripts.worker_tools import worker_topics

log = logging.getLogger("bench")


def full_load(b: Bench, pool: list[dict[str, str]], n: int, warm: list[dict[str, str]], prefix: str) -> dict[str, Any]:
    w = b.start_worker("full", prefix)
    b.warm_up(w, warm)
    before = w.metrics()
    t0 = time.monotonic()
    created = produce_burst(b.bootstrap, w.input_topic, event_bytes(pool[:n], "full"))
    t1 = w.wait_produced(len(warm) + n, timeout_s=60 + n / 5)
    after = w.metrics()
    result = tag_timings(b.read_tags(w, len(warm) + n), created)
    result["wall_eps"] = n / (t1 - t0)
    result["breakdown"] = stage_breakdown(_delta(after, before))
    result["breakdown"]["wall_seconds"] = t1 - t0
    w.stop()
    return result


def half_load(
    b: Bench, pool: list[dict[str, str]], rate: float, duration_s: float, warm: list[dict[str, str]], prefix: str
) -> dict[str, Any]:
    w = b.start_worker("half", prefix)
    b.warm_up(w, warm)
    before = w.metrics()
    n = max(10, int(rate * duration_s))
    created = produce_paced(b.bootstrap, w.input_topic, event_bytes(cycle(pool, 0, n), "half"), rate)
    w.wait_produced(len(warm) + n, timeout_s=60 + n / 5)
    after = w.metrics()
    result = tag_timings(b.read_tags(w, len(warm) + n), created)
    result["rate_eps"] = rate
    result["duration_s"] = n / rate
    result["breakdown"] = stage_breakdown(_delta(after, before))
    w.stop()
    return result


def cache_replay(b: Bench, pool: list[dict[str, str]], n: int, replay: int, prefix: str, client: str) -> dict[str, Any]:
    """Pre-produce the backlog, then start the worker (Kafka client `client`): it drains nothing
    but cache hits."""
    suffix_name = f"replay-{client}"
    products = cycle(pool[:n], 0, replay)
    suffix = f"bench-{b.run_id}-{suffix_name}"  # what start_worker will name the topics
    create_topics(b.bootstrap, worker_topics(suffix, 4))
    created = produce_burst(b.bootstrap, f"in-{suffix}", event_bytes(products, "replay"))
    t0 = time.monotonic()
    w = b.start_worker(suffix_name, prefix, TAGGER_KAFKA__CLIENT=client)
    w.wait_ready()
    t1 = w.wait_produced(replay, timeout_s=120 + replay / 100)
    metrics = w.metrics()
    result = tag_timings(b.read_tags(w, replay), created)
    result["wall_eps_incl_start"] = replay / (t1 - t0)
    result["breakdown"] = stage_breakdown(metrics)
    result["client"] = client
    w.stop()
    return result


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Counters and histogram sums accumulated between two scrapes (drops the warm-up)."""
    out: dict[str, Any] = {}
    for name, series in after.items():
        prev = before.get(name, {})
        out[name] = {k: v - prev.get(k, 0.0) for k, v in series.items()}
    return out


def kafka_floor(b: Bench, pool: list[dict[str, str]], rate: float, duration_s: float) -> dict[str, Any]:
    """Produce->receive latency through the broker alone, at the half-load rate, with a consumer
    configured like the worker's (same fetch_max_wait_ms): the part of
    the worker's latency that no worker change removes."""
    from kafka import KafkaConsumer

    suffix = f"bench-{b.run_id}-floor"
    create_topics(b.bootstrap, {f"in-{suffix}": 4})
    consumer = KafkaConsumer(
        f"in-{suffix}",
        bootstrap_servers=b.bootstrap,
        group_id=f"g-{suffix}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(group_timeouts(b.args.smoke)["TAGGER_KAFKA__SESSION_TIMEOUT_MS"]),
        heartbeat_interval_ms=int(group_timeouts(b.args.smoke)["TAGGER_KAFKA__HEARTBEAT_INTERVAL_MS"]),
        fetch_max_wait_ms=b.args.fetch_max_wait_ms,
    )
    n = max(10, int(rate * duration_s))
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)
        records = event_bytes(cycle(pool, 0, n), "floor")
        producer = threading.Thread(
            target=produce_paced, args=(b.bootstrap, f"in-{suffix}", records, rate), name="floor-producer"
        )
        producer.start()
        deadline = time.monotonic() + duration_s + 60
        while len(latencies) < n and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=50).values():
                now_ms = time.time() * 1000
                latencies.extend(now_ms - m.timestamp for m in msgs)
        producer.join(timeout=60)
    finally:
        consumer.close()
    lat = np.asarray(latencies or [float("nan")], dtype=np.float64)
    return {
        "events": len(latencies),
        "rate_eps": rate,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def inference_only(
    model_dir: Path, run_dir: Path | None, texts: list[str], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """The worker's engine (and torch) on the same texts in the worker's micro-batch size: every
    graph the artifact has on the CPU, and on `--device cuda` the served graph on the GPU too."""
    from worker.artifact import load_manifest
    from worker.engine import GRAPHS, TagEngine

    chunks = [texts[i : i + args.max_items] for i in range(0, len(texts), args.max_items)]
    out: dict[str, dict[str, float]] = {}

    def timed(name: str, fn: Any) -> None:
        fn(chunks[0])  # warm-up: first-run allocations, lazy init
        t = time.perf_counter()
        for c in chunks:
            fn(c)
        elapsed = time.perf_counter() - t
        out[name] = {"items": len(texts), "seconds": elapsed, "eps": len(texts) / elapsed}
        log.info("inference only, %s: %.1f items/s", name, len(texts) / elapsed)

    files = load_manifest(model_dir, verify=False).files
    runs = [("cpu", p) for p in ("fp32", "int8") if GRAPHS[p] in files]
    if args.device == "cuda":
        runs = [("cuda", args.serving_precision)]  # CPU graphs on GPU-sized inputs would take minutes
    for device, precision in runs:
        name = f"onnx_{precision}" + ("_cuda" if device == "cuda" else "")
        engine = TagEngine(
            model_dir, provider=device, precision=precision, max_items=args.max_items, max_tokens=args.max_tokens
        )
        timed(name, engine.tag_texts)
        del engine
    if run_dir is not None:
        from bench.naive import TorchTagger

        tagger = TorchTagger.load(run_dir, device=args.device)
        timed("torch_fp32" + ("_cuda" if args.device == "cuda" else ""), tagger.tag)
    return out


def competitor(b: Bench, pool: list[dict[str, str]], m: int, name: str) -> Competitor:
    """A competitor consumer's topics of its own, with `m` events of the pool already in its input."""
    suffix = f"bench-{b.run_id}-{name}"
    create_topics(b.bootstrap, {f"in-{suffix}": 4, f"out-{suffix}": 4})
    produce_burst(b.bootstrap, f"in-{suffix}", event_bytes(pool[:m], name))
    timeouts = group_timeouts(b.args.smoke)
    return Competitor(
        b.bootstrap,
        f"in-{suffix}",
        f"out-{suffix}",
        f"g-{suffix}",
        session_timeout_ms=int(timeouts["TAGGER_KAFKA__SESSION_TIMEOUT_MS"]),
        heartbeat_interval_ms=int(timeouts["TAGGER_KAFKA__HEARTBEAT_INTERVAL_MS"]),
    )


def naive(b: Bench, tagger: Any, pool: list[dict[str, str]], m: int) -> dict[str, float]:
    from bench.naive import run_naive

    return run_naive(competitor(b, pool, m, "naive"), tagger, m)


def batched(b: Bench, tagger: Any, pool: list[dict[str, str]], m: int, max_records: int) -> dict[str, float]:
    from bench.batched import run_batched

    return run_batched(competitor(b, pool, m, "batched"), tagger, m, max_records=max_records)
