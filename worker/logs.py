"""Logging set-up for the entry point only (plain text or one JSON object per line)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


CLIENT_LOGGERS = ("kafka", "worker.kafka_confluent.librdkafka")  # kafka-python's, librdkafka's


class RateLimit(logging.Filter):
    """At most `burst` records per (logger, level, message template) in each `window_s`; the first
    one let through after that says how many were dropped. It applies to the Kafka clients' loggers
    (every failed reconnect logs several lines: ~2,900 lines per 20 s of broker outage) and to
    warnings and errors of our own (retry loops); our info lines (one per dead letter, ...) pass."""

    def __init__(self, window_s: float = 10.0, burst: int = 3, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s, self.burst, self.now = window_s, burst, now
        self._seen: dict[tuple[str, int, str], tuple[float, int, int]] = {}  # key -> (window start, passed, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and not record.name.startswith(CLIENT_LOGGERS):
            return True
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.now()
        start, passed, dropped = self._seen.get(key, (now, 0, 0))
        if now - start >= self.window_s:
            start, passed = now, 0
        if passed >= self.burst:
            self._seen[key] = (start, passed, dropped + 1)
            return False
        if len(self._seen) > 10_000:  # templates with the values baked in: keep the table bounded
            self._seen.clear()
        self._seen[key] = (start, passed + 1, 0)
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar lines suppressed]"
        return True


def configure(level: str, json_format: bool) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RateLimit())
    handler.setFormatter(
        JsonFormatter() if json_format else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
