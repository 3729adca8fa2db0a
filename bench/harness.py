"""The benchmark's harness: inputs, a local stack (broker, Redis, worker processes), Kafka-timestamp
timings and the worker's own stage breakdown. No measurement logic (bench/scenarios.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scripts.local_services import Service, create_topics, stop_process, wait_worker_ready
from scripts.model_cache import REPO
from scripts.worker_tools import read_all, start_worker, worker_env, worker_topics
from worker.contract import compose_text
from worker.metrics import STAGES

log = logging.getLogger("bench")
# stages that run on the batch thread (the rest run on the poll thread)
# Stages on the batch threads (the rest run on the poll loop; feedback on its own thread).
BATCH_STAGES = (
    "graph_wait",
    "inference",
    "evidence",
    "cache_set",
    "overrides",
    "serialize",
    "review",
    "shadow",
    "produce",
)
REAL_MODEL = REPO / "runs" / "flipkart"


# -- inputs ------------------------------------------------------------------------------------


def load_products(path: Path, limit: int) -> tuple[list[dict[str, str]], str]:
    """Up to `limit` products with distinct model texts (file order), and where they came from."""
    rows: list[dict[str, Any]] = []
    source = str(path)
    if path.is_file():
        with path.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    else:
        raise SystemExit(f"no product data at {path}: pass --data FILE (JSONL rows with a title)")
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
        try:
            wait_worker_ready(self.port, self.proc, timeout_s)
        except RuntimeError:
            self.check_alive()  # raises with the log's tail
            raise

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
        stop_process(self.proc, grace_s=30)


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
            "TAGGER_MODEL__PROVIDER": a.device,
            "TAGGER_KAFKA__CLIENT": a.client,
            "TAGGER_HTTP__HOST": "127.0.0.1",
            "TAGGER_LOG__LEVEL": "INFO",
        }
        env.update(group_timeouts(a.smoke))
        if a.precision is not None:  # else the worker's own choice (int8 on CPU, fp16 on CUDA, when present)
            env["TAGGER_MODEL__PRECISION"] = a.precision
        return env

    def start_worker(self, name: str, prefix: str, **env_overrides: str) -> WorkerProc:
        from scripts.local_services import free_port

        suffix = f"bench-{self.run_id}-{name}"
        create_topics(self.bootstrap, worker_topics(suffix, 4))
        port = free_port()
        assert self.stack.redis is not None
        env = worker_env(
            self.bootstrap,
            self.stack.redis.url,
            self.model_dir,
            suffix,
            TAGGER_HTTP__PORT=str(port),
            TAGGER_REDIS__KEY_PREFIX=prefix,
            **(self.worker_settings_env() | env_overrides),
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
