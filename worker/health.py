"""Health state and the HTTP probes: GET /livez, /readyz, /metrics (a daemon thread, stdlib server).

The poll loop updates `Health` and the `tagger_ready` gauge on every tick; the probes only read."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.cache import Cache
from worker.metrics import Metrics

log = logging.getLogger(__name__)
STALL_S = 120.0  # the poll loop ticks every few ms; two minutes without a tick means it is stuck


@dataclass
class Health:
    """Shared state read by the HTTP probes; written by the loop (and publishing)."""

    kafka_ok: bool = False
    publish_ok: bool = True
    stopping: bool = False
    cache: Cache | None = None
    last_tick: float = field(default_factory=time.monotonic)

    @property
    def ready(self) -> bool:
        return self.kafka_ok and self.publish_ok and not self.stopping

    def published(self) -> None:
        self.publish_ok = True

    def publish_failed(self) -> None:
        self.publish_ok = False


def serve(
    host: str, port: int, health: Health, metrics: Metrics, now: Callable[[], float] = time.monotonic
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            cache = health.cache
            status = {
                "kafka_ok": health.kafka_ok,
                "publish_ok": health.publish_ok,
                "stopping": health.stopping,
                "cache": "off" if cache is None else ("degraded" if cache.degraded else "ok"),
                "loop_age_s": round(now() - health.last_tick, 3),
            }
            if path == "/livez":
                alive = now() - health.last_tick < STALL_S
                self._send(200 if alive else 503, json.dumps(status | {"alive": alive}).encode())
            elif path == "/readyz":
                self._send(200 if health.ready else 503, json.dumps(status | {"ready": health.ready}).encode())
            elif path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b'{"error": "not found"}')

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("health and metrics on http://%s:%d (/livez /readyz /metrics)", host, server.server_address[1])
    return server
