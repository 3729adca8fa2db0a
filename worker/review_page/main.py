"""`tagger review`: the composition root of the review page (settings, transport, store, reader
thread, HTTP server)."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import uuid
from datetime import UTC, datetime

from worker.settings import ReviewPageSettings, SettingsError, WorkerSettings, load_settings

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="bind address (default TAGGER_REVIEW_PAGE__HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default TAGGER_REVIEW_PAGE__PORT, 8090; 0: any free port)")
    p.add_argument("--reviewer", help="reviewer name pre-filled on the page (default TAGGER_REVIEW_PAGE__REVIEWER)")


def _settings(args: argparse.Namespace) -> tuple[WorkerSettings, ReviewPageSettings]:
    """The process's settings, and the page's section with the command-line flags applied."""
    settings = load_settings()
    flags = {"host": args.host, "port": args.port, "reviewer": args.reviewer}
    return settings, settings.review_page.model_copy(update={k: v for k, v in flags.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    try:
        settings, page = _settings(args)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2

    import uvicorn

    from worker import kafka_confluent, kafka_io, logs
    from worker.clock import RealClock
    from worker.review_page.app import create_app
    from worker.review_page.feed import ReviewFeed
    from worker.review_page.feedback import FeedbackPublisher
    from worker.review_page.store import ReviewStore

    logs.configure(settings.log.level, settings.log.json_format)
    k = settings.kafka.model_copy(update={"group_id": page.group_id})
    confluent = k.client == "confluent"
    publisher = kafka_confluent.ConfluentPublisher(k) if confluent else kafka_io.KafkaPublisher(k)
    connect = kafka_confluent.connect_consumer if confluent else kafka_io.connect_consumer
    clock, stop, store = RealClock(), threading.Event(), ReviewStore(page.max_items)
    feed = ReviewFeed(lambda: connect(k), k.review_topic, k.feedback_topic, store, stop, clock)
    reader = threading.Thread(target=feed.run, name="review-feed", daemon=True)
    reader.start()
    app = create_app(
        store,
        FeedbackPublisher(publisher, k.feedback_topic, page.publish_timeout_s, clock),
        feed.status,
        page.reviewer or "",
        now=lambda: datetime.now(UTC),
        new_id=lambda: uuid.uuid4().hex,
    )
    sock = socket.socket(socket.AF_INET6 if ":" in page.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((page.host, page.port))
    host, port = sock.getsockname()[:2]
    log.info(
        "review page on http://%s:%d/ (reading %s, publishing to %s)",
        host,
        port,
        k.review_topic,
        k.feedback_topic,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    # uvicorn catches SIGINT/SIGTERM while it serves, then re-raises them to the handlers it found:
    # ours only stop the reader, so the producer is closed below and the exit code is 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _s, _f: stop.set())
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        reader.join(timeout=5)
        try:
            publisher.close(5.0)
        except Exception as exc:  # noqa: BLE001 - closing on the way out: report, never mask the exit
            log.warning("closing the producer: %s", exc)
    return 0
