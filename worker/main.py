"""`tagger worker`: the composition root. Builds settings, engine, cache, Kafka adapters and the
poll loop; signal handlers only set an event."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

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


def build_engine(s: WorkerSettings) -> TagEngine:
    has_int8 = "model.int8.onnx" in load_manifest(s.model.path, verify=False).files
    return TagEngine(
        s.model.path,
        provider=s.model.provider,
        allow_cpu_fallback=s.model.allow_cpu_fallback,
        int8=s.model.serve_int8(has_int8),
        intra_op_threads=s.model.intra_op_threads,
        verify=s.model.verify_hashes,
        max_items=s.batching.max_items,
        max_tokens=s.batching.max_tokens,
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    from worker import logs

    logs.configure(settings.log.level, settings.log.json_format)
    try:
        engine = build_engine(settings)
    except (ArtifactError, EngineError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("model %s (%d labels) on %s", engine.model_version, len(engine.labels), engine.provider)
    if args.check:
        print(f"ok: model {engine.model_version} on {engine.provider}")
        return 0

    from worker import kafka_confluent, kafka_io
    from worker.cache import Cache, NoCache, RedisCache
    from worker.clock import Abort, RealClock
    from worker.health import Health, serve
    from worker.loop import Loop, RunBatch
    from worker.metrics import Metrics
    from worker.outputs import BuildMessages
    from worker.publish import Publish
    from worker.records import DecodeRecords, Tokenize
    from worker.tagging import CacheLookup, TagBatch

    clock = RealClock()
    metrics = Metrics()
    health = Health()
    stop, abort = threading.Event(), Abort(clock)
    cache: Cache = NoCache()
    if settings.redis.enabled:
        r = settings.redis
        cache = RedisCache.from_url(
            r.url,
            password=r.password.get_secret_value() if r.password else None,
            timeout_s=r.timeout_s,
            ttl_s=r.ttl_s,
            metrics=metrics,
            retry_interval_s=r.retry_interval_s,
        )
        health.cache = cache
    server = serve(settings.http.host, settings.http.port, health, metrics) if settings.http.port else None

    def on_signal(signum: int, _frame: object) -> None:
        if abort.requested_at is None:
            abort.requested_at = clock.now()
        log.info("%s: draining (budget %.0f s)", signal.Signals(signum).name, settings.shutdown.drain_timeout_s)
        health.stopping = True
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    k = settings.kafka
    # Two transports behind the same Protocols (worker/transport.py); README: which to pick when.
    confluent = k.client == "confluent"
    publisher = kafka_confluent.ConfluentPublisher(k) if confluent else kafka_io.KafkaPublisher(k)
    connect = kafka_confluent.connect_consumer if confluent else kafka_io.connect_consumer
    run_batch = RunBatch(
        TagBatch(engine, cache, settings.redis.key_prefix, metrics),
        BuildMessages(k, engine.model_version, settings.limits),
        Publish(publisher, k, metrics, health, abort, clock),
        metrics,
    )
    loop = Loop(
        lambda: connect(k),
        k,
        settings.batching,
        settings.shutdown,
        DecodeRecords(settings.limits, metrics),
        CacheLookup(cache, settings.redis.key_prefix, engine.model_version, metrics),
        Tokenize(engine, metrics),
        run_batch,
        publisher,
        metrics,
        health,
        stop,
        abort,
        clock,
    )
    code = loop.run()
    if server is not None:
        server.shutdown()
    return code
