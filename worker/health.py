"""HTTP probes and metrics: GET /livez, /readyz, /metrics (a daemon thread, stdlib server)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.metrics import Metrics
from worker.pipeline import Health

log = logging.getLogger(__name__)
STALL_S = 120.0  # the poll loop ticks every few ms; two minutes without a tick means it is stuck


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
                "stopping": health.stopping,
                "cache": "off" if cache is None else ("degraded" if cache.degraded else "ok"),
                "loop_age_s": round(now() - health.last_tick, 3),
            }
            if path == "/livez":
                alive = now() - health.last_tick < STALL_S
                self._send(200 if alive else 503, json.dumps(status | {"alive": alive}).encode())
            elif path == "/readyz":
                metrics.ready.set(1 if health.ready else 0)
                self._send(200 if health.ready else 503, json.dumps(status | {"ready": health.ready}).encode())
            elif path == "/metrics":
                metrics.ready.set(1 if health.ready else 0)
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
