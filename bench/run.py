"""`make bench`: how fast the worker tags, where its time goes, and what it beats.

All in one run on a local Tansu broker and Redis (scripts/local_services.py), with `tagger worker`
as its own process exactly as deployed, on real Flipkart titles:

1. full load: a burst of N product events into a fresh topic (cold cache) -> events/s from the
   first tag event to the last, and produce->tag latency (mostly queueing at full load);
2. half load: a paced producer at half the full-load rate (fresh topic, cold cache) -> latency,
   against the target max_wait_ms + 2 x one batch's inference time;
3. cache-hit replay: the same products again with run 1's key prefix (every one a Redis hit);
4. inference only: the worker's TagEngine (ONNX fp32, int8) and the torch model, same texts and
   micro-batch sizes, no Kafka or Redis;
5. naive: one message at a time through torch with an auto-committing kafka-python consumer
   (bench/naive.py);
6. the worker's own per-stage breakdown, scraped from its /metrics.

Timestamps are Kafka's: a product event's CreateTime (set by our producer) and the tag event's
CreateTime (set by the worker's producer when it sends). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scripts.local_services import Service, create_topics, ensure_redis, start_tansu
from scripts.model_cache import FLIPKART, REPO, ensure_model, model_is_usable
from tests.kafka_helpers import read_all, start_worker, worker_env
from worker.contract import compose_text
from worker.settings import BatchingSettings, KafkaSettings

log = logging.getLogger("bench")

STAGES = ("poll", "decode", "cache_get", "tokenize", "inference", "cache_set", "produce", "commit")
BATCH_STAGES = ("cache_get", "tokenize", "inference", "cache_set", "produce")
REAL_MODEL = REPO / "runs" / "flipkart"
REQUIRED_KEYS = (
    "naive_eps",
    "worker_eps",
    "inference_only_eps",
    "cache_hit_eps",
    "p99_ms_half_load",
    "speedup_vs_naive",
    "io_overhead_share",
)


# -- inputs ------------------------------------------------------------------------------------


def load_products(path: Path, limit: int) -> tuple[list[dict[str, str]], str]:
    """Up to `limit` products with distinct model texts (file order), and where they came from."""
    rows: list[dict[str, Any]] = []
    source = str(path)
    if path.is_file():
        with path.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    else:
        from tests.model_factory import make_rows

        rows, source = make_rows(max(limit, 2000), seed=3), "tests.model_factory.make_rows (synthetic)"
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    for row in rows:
        title = str(row.get("title") or "")
        desc = str(row.get("description") or "") or None
        text = compose_text(title, desc)
        if not title.strip() or text in seen:
            continue
        seen.add(text)
        product = {"title": title}
        if desc:
            product["description"] = str(desc)
        out.append(product)
        if len(out) >= limit:
            break
    return out, source


def event_bytes(products: Sequence[dict[str, str]], id_prefix: str) -> list[tuple[bytes, bytes]]:
    """(key, value) per product: the product event JSON the worker consumes."""
    out = []
    for i, p in enumerate(products):
        pid = f"{id_prefix}-{i}"
        out.append((pid.encode(), json.dumps({"product_id": pid, **p}, ensure_ascii=False).encode()))
    return out


def cycle(pool: Sequence[dict[str, str]], start: int, n: int) -> list[dict[str, str]]:
    return [pool[(start + i) % len(pool)] for i in range(n)]


# -- Kafka helpers -----------------------------------------------------------------------------


def produce_burst(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> dict[tuple[int, int], int]:
    """Send as fast as the client goes; return {(partition, offset): CreateTime ms}."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, batch_size=262_144, max_request_size=4 * 1_048_576
    )
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        producer.flush(timeout=120)
        return _created(futures)
    finally:
        producer.close(timeout=10)


def produce_paced(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate: float
) -> dict[tuple[int, int], int]:
    """Send record i at start + i / rate (a steady open-loop load); return CreateTimes."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_request_size=4 * 1_048_576)
    try:
        futures = []
        start = time.perf_counter()
        for i, (k, v) in enumerate(records):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(producer.send(topic, key=k, value=v))
        producer.flush(timeout=120)
        return _created(futures)
    finally:
        producer.close(timeout=10)


def _created(futures: list[Any]) -> dict[tuple[int, int], int]:
    out = {}
    for f in futures:
        md = f.get(timeout=0)
        out[(md.partition, md.offset)] = md.timestamp
    return out


# -- the worker process ------------------------------------------------------------------------


def http_get(port: int, path: str, timeout_s: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@dataclass
class WorkerProc:
    name: str
    suffix: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def input_topic(self) -> str:
        return f"in-{self.suffix}"

    @property
    def output_topic(self) -> str:
        return f"out-{self.suffix}"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"worker {self.name} exited with code {self.proc.returncode}:\n{tail}")

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError):
                if http_get(self.port, "/readyz", 1)[0] == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready after {timeout_s:.0f} s (log {self.log_path})")

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        code, body = http_get(self.port, "/metrics")
        if code != 200:
            raise RuntimeError(f"worker {self.name} /metrics answered {code}")
        return parse_metrics(body.decode())

    def produced(self) -> int:
        return int(sum(self.metrics().get("tagger_produced_total", {}).values()))

    def wait_produced(self, n: int, timeout_s: float) -> float:
        """Block until the worker has published `n` tag events; return the monotonic time seen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if self.produced() >= n:
                return time.monotonic()
            time.sleep(0.25)  # a /metrics scrape costs the worker CPU; rates come from Kafka timestamps
        raise TimeoutError(f"worker {self.name}: {self.produced()} of {n} tag events after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Stack:
    """Everything started for the run; `close` stops it (also on Ctrl-C or an exception)."""

    workdir: Path
    broker: Service | None = None
    redis: Service | None = None
    workers: list[WorkerProc] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.stop()
        if self.redis is not None and self.prefixes:
            with contextlib.suppress(Exception):
                _delete_keys(self.redis.url, self.prefixes)
        for svc in (self.redis, self.broker):
            if svc is not None:
                with contextlib.suppress(Exception):
                    svc.stop()


def _delete_keys(url: str, prefixes: list[str]) -> None:
    """The bench's cache entries would otherwise sit in a shared Redis for the 7-day TTL."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        for prefix in prefixes:
            batch = []
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.unlink(*batch)
                    batch = []
            if batch:
                client.unlink(*batch)
    finally:
        client.close()


def group_timeouts(smoke: bool) -> dict[str, str]:
    """Tansu's group join takes about half the session timeout (../shared/NOTES.md). 2000/300 is
    stable there too, but a worker saturating both cores could miss heartbeats: smoke runs only."""
    session, heartbeat = (2000, 300) if smoke else (6000, 1000)
    return {"TAGGER_KAFKA__SESSION_TIMEOUT_MS": str(session), "TAGGER_KAFKA__HEARTBEAT_INTERVAL_MS": str(heartbeat)}


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    stack: Stack
    model_dir: Path
    run_id: str

    @property
    def bootstrap(self) -> str:
        assert self.stack.broker is not None
        return self.stack.broker.url

    def worker_settings_env(self) -> dict[str, str]:
        a = self.args
        env = {
            "TAGGER_BATCHING__MAX_ITEMS": str(a.max_items),
            "TAGGER_BATCHING__MAX_TOKENS": str(a.max_tokens),
            "TAGGER_BATCHING__MAX_WAIT_MS": str(a.max_wait_ms),
            "TAGGER_BATCHING__MAX_IN_FLIGHT": str(a.max_in_flight),
            "TAGGER_KAFKA__FETCH_MAX_WAIT_MS": str(a.fetch_max_wait_ms),
            "TAGGER_MODEL__INT8": "true" if a.int8 else "false",
            "TAGGER_HTTP__HOST": "127.0.0.1",
            "TAGGER_LOG__LEVEL": "INFO",
        }
        env.update(group_timeouts(a.smoke))
        return env

    def start_worker(self, name: str, prefix: str) -> WorkerProc:
        from scripts.local_services import free_port

        suffix = f"bench-{self.run_id}-{name}"
        create_topics(self.bootstrap, {f"in-{suffix}": 4, f"out-{suffix}": 4, f"dlq-{suffix}": 1})
        port = free_port()
        assert self.stack.redis is not None
        env = worker_env(
            self.bootstrap,
            self.stack.redis.url,
            self.model_dir,
            suffix,
            TAGGER_HTTP__PORT=str(port),
            TAGGER_REDIS__KEY_PREFIX=prefix,
            **self.worker_settings_env(),
        )
        if prefix not in self.stack.prefixes:
            self.stack.prefixes.append(prefix)
        log_path = self.stack.workdir / f"worker-{name}.log"
        w = WorkerProc(name, suffix, port, start_worker(env, log_path), log_path)
        self.stack.workers.append(w)
        log.info("worker %s: pid %d, port %d, log %s", name, w.proc.pid, port, log_path)
        return w

    def warm_up(self, w: WorkerProc, warm: list[dict[str, str]]) -> None:
        """Wait until the group is joined and the model has run once, so a burst measures steady state."""
        w.wait_ready()
        produce_burst(self.bootstrap, w.input_topic, event_bytes(warm, "warm"))
        w.wait_produced(len(warm), timeout_s=120)

    def read_tags(self, w: WorkerProc, expected: int) -> list[Any]:
        return read_all(self.bootstrap, w.output_topic, lambda m: len(m) >= expected, timeout_s=120)


def tag_timings(messages: list[Any], created: dict[tuple[int, int], int]) -> dict[str, Any]:
    """Per measured event: latency and batch; throughput from the first batch's tags to the last's.

    A batch's tag events share `tagged_at`. The first batch is excluded from the rate (its work
    happened before the first timestamp), so eps = (events after batch 1) / (last - first).
    """
    seen: set[tuple[int, int]] = set()
    latencies: list[float] = []
    batches: dict[str, list[int]] = {}
    cached = 0
    for m in messages:
        v = json.loads(m.value)
        src = (v["source_partition"], v["source_offset"])
        if src not in created or src in seen:
            continue  # warm-up events (not in `created`) and redeliveries
        seen.add(src)
        latencies.append(m.timestamp - created[src])
        batches.setdefault(v["tagged_at"], []).append(m.timestamp)
        cached += bool(v["cached"])
    if not latencies:
        raise RuntimeError("no tag events for the measured product events")
    ends = sorted((max(ts), len(ts)) for ts in batches.values())
    span_s = (ends[-1][0] - ends[0][0]) / 1000
    after_first = sum(n for _, n in ends[1:])
    eps = after_first / span_s if span_s > 0 and after_first else float("nan")
    lat = np.asarray(latencies, dtype=np.float64)
    return {
        "events": len(latencies),
        "missing": len(created) - len(latencies),
        "cached": cached,
        "batches": len(ends),
        "mean_batch_size": len(latencies) / len(ends),
        "span_s": span_s,
        "eps": eps,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
    }


def stage_breakdown(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[str, Any]:
    sums = metrics.get("tagger_stage_seconds_sum", {})
    counts = metrics.get("tagger_stage_seconds_count", {})
    per = {}
    for stage in STAGES:
        key = (("stage", stage),)
        per[stage] = {"seconds": sums.get(key, 0.0), "count": int(counts.get(key, 0.0))}
    total = sum(v["seconds"] for v in per.values()) or 1.0
    for v in per.values():
        v["share"] = v["seconds"] / total
    inf_sum = sum(metrics.get("tagger_inference_seconds_sum", {}).values())
    inf_count = sum(metrics.get("tagger_inference_seconds_count", {}).values())
    bs_sum = sum(metrics.get("tagger_batch_size_sum", {}).values())
    bs_count = sum(metrics.get("tagger_batch_size_count", {}).values())
    return {
        "stages": per,
        "batch_thread_seconds": sum(per[s]["seconds"] for s in BATCH_STAGES),
        "inference_batches": int(inf_count),
        "mean_inference_ms": 1000 * inf_sum / inf_count if inf_count else float("nan"),
        "mean_batch_size": bs_sum / bs_count if bs_count else float("nan"),
        "batches": int(bs_count),
    }


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


def cache_replay(b: Bench, pool: list[dict[str, str]], n: int, replay: int, prefix: str) -> dict[str, Any]:
    """Pre-produce the backlog, then start the worker: it drains nothing but cache hits."""
    suffix_name = "replay"
    products = cycle(pool[:n], 0, replay)
    suffix = f"bench-{b.run_id}-{suffix_name}"  # what start_worker will name the topics
    create_topics(b.bootstrap, {f"in-{suffix}": 4, f"out-{suffix}": 4, f"dlq-{suffix}": 1})
    created = produce_burst(b.bootstrap, f"in-{suffix}", event_bytes(products, "replay"))
    t0 = time.monotonic()
    w = b.start_worker(suffix_name, prefix)
    w.wait_ready()
    t1 = w.wait_produced(replay, timeout_s=120 + replay / 100)
    metrics = w.metrics()
    result = tag_timings(b.read_tags(w, replay), created)
    result["wall_eps_incl_start"] = replay / (t1 - t0)
    result["breakdown"] = stage_breakdown(metrics)
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
    """The worker's engine (and torch) on the same texts in the worker's micro-batch size."""
    from worker.engine import TagEngine

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

    for int8 in (False, True):
        name = "onnx_int8" if int8 else "onnx_fp32"
        try:
            engine = TagEngine(model_dir, int8=int8, max_items=args.max_items, max_tokens=args.max_tokens)
        except Exception as exc:  # no model.int8.onnx in this artifact
            log.info("%s skipped: %s", name, exc)
            continue
        timed(name, engine.tag_texts)
        del engine
    if run_dir is not None:
        from bench.naive import TorchTagger

        tagger = TorchTagger.load(run_dir)
        timed("torch_fp32", tagger.tag)
    return out


def naive(b: Bench, tagger: Any, pool: list[dict[str, str]], m: int) -> dict[str, float]:
    from bench.naive import run_naive

    suffix = f"bench-{b.run_id}-naive"
    create_topics(b.bootstrap, {f"in-{suffix}": 4, f"out-{suffix}": 4})
    produce_burst(b.bootstrap, f"in-{suffix}", event_bytes(pool[:m], "naive"))
    timeouts = group_timeouts(b.args.smoke)
    return run_naive(
        b.bootstrap,
        f"in-{suffix}",
        f"out-{suffix}",
        f"g-{suffix}",
        tagger,
        m,
        session_timeout_ms=int(timeouts["TAGGER_KAFKA__SESSION_TIMEOUT_MS"]),
        heartbeat_interval_ms=int(timeouts["TAGGER_KAFKA__HEARTBEAT_INTERVAL_MS"]),
    )


# -- report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu_model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    import onnxruntime

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def fmt(x: Any, digits: int = 1) -> str:
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        return f"{x:,.{digits}f}"
    return str(x)


def render(r: dict[str, Any]) -> str:
    s, m = r["settings"], r["machine"]
    full, half, hit = r["full_load"], r["half_load"], r["cache_hit"]
    inf = r["inference_only"]
    lines = [
        "# product-tagger benchmark",
        "",
        f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['platform']}, Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}; load average at start {m['loadavg_start']}, end {m['loadavg_end']}",
        f"Model: {r['model_dir']} ({r['model_version']}), serving {'int8' if s['int8'] else 'fp32'}; "
        f"texts: {r['texts_source']}",
        f"Worker settings: max_items {s['max_items']}, max_tokens {s['max_tokens']}, max_wait_ms {s['max_wait_ms']}, "
        f"max_in_flight {s['max_in_flight']}, linger_ms {s['linger_ms']}, max_poll_records {s['max_poll_records']}, "
        f"ORT intra-op threads {s['intra_op_threads']}",
        f"N = {r['n_events']} (full load), {half['events']} (half load), {hit['events']} (cache replay), "
        f"{r['naive']['events']:.0f} (naive)",
        "",
        "| measurement | events/s | p50 ms | p95 ms | p99 ms | notes |",
        "|---|---:|---:|---:|---:|---|",
        f"| worker, full load (cold cache) | {fmt(full['eps'])} | {fmt(full['p50_ms'], 0)} | {fmt(full['p95_ms'], 0)} "
        f"| {fmt(full['p99_ms'], 0)} | burst of {full['events']} after warm-up; latency is queueing; "
        f"{full['batches']} batches, mean {fmt(full['mean_batch_size'])} items |",
        f"| worker, half load (cold cache) | {fmt(half['rate_eps'])} offered | {fmt(half['p50_ms'], 0)} "
        f"| {fmt(half['p95_ms'], 0)} | {fmt(half['p99_ms'], 0)} | target p99 <= {fmt(r['p99_target_ms'], 0)} ms "
        f"({'met' if r['p99_target_met'] else 'MISSED'}); mean batch {fmt(half['mean_batch_size'])} items |",
        f"| worker, cache-hit replay | {fmt(hit['eps'])} | {fmt(hit['p50_ms'], 0)} | {fmt(hit['p95_ms'], 0)} "
        f"| {fmt(hit['p99_ms'], 0)} | target >= 20,000/s ({'met' if hit['eps'] >= 20_000 else 'MISSED'}); "
        f"{hit['cached']}/{hit['events']} hits; pre-produced backlog, so latency includes worker start-up |",
    ]
    fl = r["broker_floor_half_rate"]
    lines.append(
        f"| broker alone, half-load rate | {fmt(fl['rate_eps'])} offered | {fmt(fl['p50_ms'], 0)} "
        f"| {fmt(fl['p95_ms'], 0)} | {fmt(fl['p99_ms'], 0)} | produce -> plain consumer with the worker's "
        f"fetch settings (fetch_max_wait_ms {r['settings']['fetch_max_wait_ms']}), no worker |"
    )
    for name in ("onnx_fp32", "onnx_int8", "torch_fp32"):
        if name in inf:
            lines.append(
                f"| inference only, {name.replace('_', ' ')} | {fmt(inf[name]['eps'])} | | | | "
                f"TagEngine/torch on the same texts in batches of {s['max_items']}, no I/O |"
            )
    lines.append(
        f"| naive (per message, torch, auto-commit) | {fmt(r['naive_eps'])} | | | | "
        f"{r['naive']['events']:.0f} events in {fmt(r['naive']['elapsed_s'])} s |"
    )
    lines += [
        "",
        f"- speedup vs naive: **{fmt(r['speedup_vs_naive'], 1)}x**",
        f"- I/O overhead share (1 - worker / inference-only, same precision): **{fmt(100 * r['io_overhead_share'])}%**",
        f"- half-load target: max_wait_ms {s['max_wait_ms']} + 2 x {fmt(r['half_load_batch_inference_ms'])} ms "
        f"(mean inference per batch at half load) = {fmt(r['p99_target_ms'], 0)} ms; "
        f"with full-load batches ({fmt(r['full_load_batch_inference_ms'])} ms) it would be "
        f"{fmt(r['p99_target_ms_full_batches'], 0)} ms",
        "",
    ]
    for title, bd in (("full load", full["breakdown"]), ("cache-hit replay", hit["breakdown"])):
        lines += [
            f"Worker /metrics, {title}: {bd['batches']} batches, mean {fmt(bd['mean_batch_size'])} items"
            + (f", wall {fmt(bd['wall_seconds'])} s" if "wall_seconds" in bd else ""),
            "",
            "| stage | thread | seconds | count | share |",
            "|---|---|---:|---:|---:|",
        ]
        for stage, v in bd["stages"].items():
            thread = "batch" if stage in BATCH_STAGES else "poll loop"
            lines.append(f"| {stage} | {thread} | {fmt(v['seconds'], 3)} | {v['count']} | {fmt(100 * v['share'])}% |")
        lines += ["", "(poll includes the poll loop's idle waits while batches are in flight.)", ""]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    b = BatchingSettings.model_validate({})
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=None, help="N product events for full load and replay (3000)")
    p.add_argument("--naive-events", type=int, default=None, help="M events for the naive consumer (300)")
    p.add_argument("--replay-events", type=int, default=None, help="cache-hit replay size (max(N, 20000))")
    p.add_argument("--half-seconds", type=float, default=None, help="half-load duration (18 s)")
    p.add_argument("--model", type=Path, default=None, help="model artifact dir (default: runs/flipkart/model)")
    p.add_argument("--run", type=Path, default=None, help="training run dir for torch (model dir's ../run)")
    p.add_argument("--data", type=Path, default=FLIPKART, help="product titles (JSONL)")
    p.add_argument("--int8", action="store_true", help="serve model.int8.onnx in the worker")
    p.add_argument("--max-items", type=int, default=b.max_items)
    p.add_argument("--max-tokens", type=int, default=b.max_tokens)
    p.add_argument("--max-wait-ms", type=float, default=b.max_wait_ms)
    p.add_argument("--max-in-flight", type=int, default=b.max_in_flight)
    p.add_argument(
        "--fetch-max-wait-ms", type=int, default=10,
        help="worker fetch wait (10): Tansu holds every fetch this long even when data is there; Kafka does not",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes everywhere (for the test suite)")
    p.add_argument("--json-out", type=Path, default=None, help="also write the JSON result here")
    p.add_argument("--keep-logs", action="store_true", help="keep worker and broker logs (path in the JSON)")
    args = p.parse_args(argv)
    smoke = args.smoke
    args.events = args.events or (128 if smoke else 3000)
    args.naive_events = args.naive_events or (8 if smoke else 300)
    args.replay_events = args.replay_events or (args.events if smoke else max(args.events, 20_000))
    args.half_seconds = args.half_seconds or (2.0 if smoke else 18.0)
    return args


def resolve_model(args: argparse.Namespace) -> tuple[Path, Path | None]:
    if args.model is not None:
        model_dir = args.model
    elif model_is_usable(REAL_MODEL / "model"):
        model_dir = REAL_MODEL / "model"
    else:
        model_dir = ensure_model(REPO / ".bench" / "flipkart")[1]
    run_dir = args.run or model_dir.parent / "run"
    if not (run_dir / "tagger.json").is_file():
        log.warning("no training run at %s: torch and naive numbers need one (--run)", run_dir)
        return model_dir, None
    return model_dir, run_dir


def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    model_dir, run_dir = resolve_model(args)
    if run_dir is None:
        raise SystemExit("a training run directory (--run) is needed for the torch and naive measurements")
    from worker.artifact import load_manifest

    manifest = load_manifest(model_dir, verify=False)
    n, warm_n = args.events, 4 if args.smoke else 16
    half_n_max = int(args.half_seconds * 5000) if args.smoke else 20_000
    pool, source = load_products(args.data, n + warm_n + half_n_max)
    if len(pool) < n + warm_n:
        log.warning("only %d distinct texts for N=%d: full load will contain cache hits", len(pool), n)
    warm = pool[-warm_n:]
    run_id = uuid.uuid4().hex[:8]
    b = Bench(args, stack, model_dir, run_id)
    prefix_cold, prefix_half = f"bench-{run_id}-cold:", f"bench-{run_id}-half:"

    log.info("starting broker and redis")
    stack.broker = start_tansu(log_dir=stack.workdir)
    stack.redis = ensure_redis()

    log.info("1/5 full load: %d events", n)
    full = full_load(b, pool, n, warm, prefix_cold)
    log.info("full load: %.1f events/s, p99 %.0f ms", full["eps"], full["p99_ms"])
    worker_eps = full["eps"]

    rate = max(1.0, worker_eps / 2)
    log.info("2/5 half load: %.1f events/s for %.0f s", rate, args.half_seconds)
    half = half_load(b, pool, rate, args.half_seconds, warm, prefix_half)
    log.info("half load: p99 %.0f ms", half["p99_ms"])

    log.info("2b/5 broker floor: %.1f events/s through Tansu alone", rate)
    floor = kafka_floor(b, pool, rate, min(args.half_seconds, 6.0))
    log.info("broker floor: p50 %.0f ms, p99 %.0f ms", floor["p50_ms"], floor["p99_ms"])

    log.info("3/5 cache-hit replay: %d events", args.replay_events)
    hit = cache_replay(b, pool, n, args.replay_events, prefix_cold)
    log.info("cache-hit replay: %.1f events/s (%d/%d hits)", hit["eps"], hit["cached"], hit["events"])

    log.info("4/5 inference only")
    texts = [compose_text(p["title"], p.get("description")) for p in pool[:n]]
    inf = inference_only(model_dir, run_dir, texts, args)

    log.info("5/5 naive: %d events", args.naive_events)
    from bench.naive import TorchTagger

    nv = naive(b, TorchTagger.load(run_dir), pool, args.naive_events)
    log.info("naive: %.1f events/s", nv["eps"])

    serving = "onnx_int8" if args.int8 else "onnx_fp32"
    inference_eps = inf[serving]["eps"]
    half_inf = half["breakdown"]["mean_inference_ms"]
    full_inf = full["breakdown"]["mean_inference_ms"]
    target = args.max_wait_ms + 2 * half_inf
    k = KafkaSettings.model_validate({})
    settings = {
        "max_items": args.max_items,
        "max_tokens": args.max_tokens,
        "max_wait_ms": args.max_wait_ms,
        "max_in_flight": args.max_in_flight,
        "fetch_max_wait_ms": args.fetch_max_wait_ms,
        "int8": args.int8,
        "linger_ms": k.linger_ms,
        "max_poll_records": k.max_poll_records,
        "intra_op_threads": f"0 (= {os.cpu_count()})",
        "session_timeout_ms": int(group_timeouts(args.smoke)["TAGGER_KAFKA__SESSION_TIMEOUT_MS"]),
        "heartbeat_interval_ms": int(group_timeouts(args.smoke)["TAGGER_KAFKA__HEARTBEAT_INTERVAL_MS"]),
        "input_partitions": 4,
    }
    mach = machine() | {"loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    mach["loadavg_start"] = args.loadavg_start
    return {
        "model_dir": str(model_dir),
        "run_dir": str(run_dir),
        "model_version": manifest.model_version,
        "texts_source": source,
        "distinct_texts": len(pool),
        "n_events": n,
        "smoke": args.smoke,
        "machine": mach,
        "settings": settings,
        "full_load": full,
        "half_load": half,
        "broker_floor_half_rate": floor,
        "cache_hit": hit,
        "inference_only": inf,
        "naive": nv,
        "naive_eps": nv["eps"],
        "worker_eps": worker_eps,
        "inference_only_eps": inference_eps,
        "onnx_fp32_eps": inf.get("onnx_fp32", {}).get("eps"),
        "onnx_int8_eps": inf.get("onnx_int8", {}).get("eps"),
        "torch_fp32_eps": inf.get("torch_fp32", {}).get("eps"),
        "cache_hit_eps": hit["eps"],
        "p50_ms_full_load": full["p50_ms"],
        "p95_ms_full_load": full["p95_ms"],
        "p99_ms_full_load": full["p99_ms"],
        "p50_ms_half_load": half["p50_ms"],
        "p95_ms_half_load": half["p95_ms"],
        "p99_ms_half_load": half["p99_ms"],
        "half_load_batch_inference_ms": half_inf,
        "full_load_batch_inference_ms": full_inf,
        "p99_target_ms": target,
        "p99_target_ms_full_batches": args.max_wait_ms + 2 * full_inf,
        "p99_target_met": half["p99_ms"] <= target,
        "cache_hit_target_eps": 20_000,
        "cache_hit_target_met": hit["eps"] >= 20_000,
        "speedup_vs_naive": worker_eps / nv["eps"],
        "io_overhead_share": 1 - worker_eps / inference_eps,
        "breakdown": full["breakdown"],
    }


@contextlib.contextmanager
def _stack(keep_logs: bool) -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    stack = Stack(workdir)
    try:
        yield stack
    finally:
        stack.close()
        if not keep_logs:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.loadavg_start = [round(x, 2) for x in os.getloadavg()]
    with _stack(args.keep_logs) as stack:
        result = run(args, stack)
        result["logs_dir"] = str(stack.workdir) if args.keep_logs else None
    print(render(result))
    line = json.dumps(_finite(result), allow_nan=False, default=_json_default)
    if args.json_out is not None:
        args.json_out.write_text(line + "\n")
    print(line, flush=True)
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """NaN/inf (e.g. a rate over a zero span) become null: strict JSON, and visibly missing."""
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _on_sigterm)
    threading.current_thread().name = "bench"
    sys.exit(main())
