"""`tagger worker`: the composition root. Builds settings, engine, cache, Kafka adapters and the
poll loop; signal handlers only set an event."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from functools import partial
from pathlib import Path

from worker.artifact import ArtifactError, load_manifest
from worker.engine import EngineError, TagEngine
from worker.settings import SettingsError, WorkerSettings, load_settings

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--check",
        action="store_true",
        help="validate settings and load the model (hashes, provider), then exit 0/2; for probes and CI",
    )


def build_engine(s: WorkerSettings, path: Path | None = None) -> TagEngine:
    """The engine for the artifact at `path` (default the model setting's path)."""
    path = path or s.model.path
    files = load_manifest(path, verify=False).files
    return TagEngine(
        path,
        provider=s.model.provider,
        allow_cpu_fallback=s.model.allow_cpu_fallback,
        precision=s.model.serve_precision(files),
        io_binding=s.model.io_binding,
        intra_op_threads=s.model.intra_op_threads,
        intra_op_spinning=s.model.intra_op_spinning,
        verify=s.model.verify_hashes,
        max_items=s.batching.max_items,
        max_tokens=s.batching.max_tokens,
        trace_lexical=s.evidence.enabled,
    )


def _start_engine(s: WorkerSettings, path: Path, role: str) -> TagEngine | None:
    try:
        return build_engine(s, path)
    except (ArtifactError, EngineError) as exc:
        log.error("cannot start: %s: %s", role, exc)
        return None


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    from worker import logs

    logs.configure(settings.log.level, settings.log.json_format)
    engine = _start_engine(settings, settings.model.path, "model")
    if engine is None:
        return 2
    log.info(
        "model %s (taxonomy %s, %d labels) on %s",
        engine.model_version,
        engine.taxonomy_version,
        len(engine.labels),
        engine.provider,
    )
    shadow_engine = None
    if settings.shadow.path is not None:
        if (shadow_engine := _start_engine(settings, settings.shadow.path, "shadow model")) is None:
            return 2
        log.info(
            "shadow model %s (taxonomy %s) publishing to %s only",
            shadow_engine.model_version,
            shadow_engine.taxonomy_version,
            settings.shadow.output_topic,
        )
    if args.check:
        line = f"ok: model {engine.model_version} (taxonomy {engine.taxonomy_version}) on {engine.provider}"
        if shadow_engine is not None:
            line += f"; shadow {shadow_engine.model_version} (taxonomy {shadow_engine.taxonomy_version})"
        print(line)
        return 0

    from worker import kafka_confluent, kafka_io
    from worker.cache import Cache, NoCache, RedisCache
    from worker.clock import RealClock
    from worker.health import Health, serve
    from worker.heap import Heap
    from worker.loop import build_loop
    from worker.metrics import Metrics
    from worker.overrides import RedisOverrides
    from worker.reload import ModelHolder, Watcher
    from worker.shadow import ShadowRun

    clock = RealClock()
    metrics = Metrics()
    health = Health()
    models = ModelHolder(engine, metrics)
    watcher = None
    if settings.model.reload_interval_s > 0:
        watcher = Watcher(
            settings.model.path, models, partial(build_engine, settings), settings.model.reload_interval_s, metrics
        )
        watcher.start()
    cache: Cache = NoCache()
    store: RedisOverrides | None = None
    if settings.redis.enabled:
        r = settings.redis
        cache = redis_cache = RedisCache.from_url(
            r.url,
            password=r.password.get_secret_value() if r.password else None,
            timeout_s=r.timeout_s,
            ttl_s=r.ttl_s,
            metrics=metrics,
            retry_interval_s=r.retry_interval_s,
        )
        health.cache = cache
        if settings.feedback.enabled:  # the same client (a thread-safe pool): overrides live beside the cache
            store = RedisOverrides(
                redis_cache.client,
                r.key_prefix,
                metrics,
                r.retry_interval_s,
                known_ttl_s=settings.feedback.known_product_ttl_s,
            )
    elif settings.feedback.enabled:
        log.warning(
            "feedback needs Redis (TAGGER_REDIS__ENABLED=false): %s is not consumed", settings.kafka.feedback_topic
        )
    server = serve(settings.http.host, settings.http.port, health, metrics) if settings.http.port else None
    k = settings.kafka
    # Two transports behind the same Protocols (worker/transport.py); README: which to pick when.
    confluent = k.client == "confluent"
    publisher = kafka_confluent.ConfluentPublisher(k) if confluent else kafka_io.KafkaPublisher(k)
    # The producer connects and learns its topics while the consumer joins the group, not on the
    # first batch (librdkafka's first flush took ~0.5 s otherwise; README "What each change bought").
    topics = [k.output_topic, k.dlq_topic] + ([k.review_topic] if settings.review.enabled else [])
    threading.Thread(
        target=publisher.warm, args=(topics, k.bootstrap_timeout_s), name="producer-warm", daemon=True
    ).start()
    connect = kafka_confluent.connect_consumer if confluent else kafka_io.connect_consumer
    shadow = None
    if shadow_engine is not None:
        shadow = ShadowRun(shadow_engine, settings.shadow.output_topic, settings.shadow.budget_ms / 1000, metrics)
        metrics.model_info.labels(shadow_engine.model_version, "shadow").set(1)
    loop = build_loop(
        settings,
        models,
        cache,
        lambda: connect(k),
        publisher,
        clock,
        metrics=metrics,
        health=health,
        shadow=shadow,
        overrides=store,
        heap=Heap(),
    )

    def on_signal(signum: int, _frame: object) -> None:
        if loop.abort.requested_at is None:
            loop.abort.requested_at = clock.now()
        log.info("%s: draining (budget %.0f s)", signal.Signals(signum).name, settings.shutdown.drain_timeout_s)
        health.stopping = True
        loop.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = loop.run()
    if watcher is not None:
        watcher.close()
    if server is not None:
        server.shutdown()
    return code
