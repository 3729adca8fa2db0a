"""The log rate limit that bounds the Kafka clients' reconnect storm (pure: a fake clock)."""

from __future__ import annotations

import io
import logging

from worker import logs


def _record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeated_lines_are_limited_per_template_and_counted() -> None:
    t = [0.0]
    f = logs.RateLimit(window_s=10.0, burst=3, now=lambda: t[0])
    storm = [_record("kafka.net.connection", logging.WARNING, "%s: Connection lost", f"conn-{i}") for i in range(1000)]
    assert sum(f.filter(r) for r in storm) == 3
    other = _record("kafka.cluster", logging.WARNING, "Metadata refresh: failed %s", "x")
    assert f.filter(other)  # another template has its own budget
    t[0] = 10.0
    nxt = _record("kafka.net.connection", logging.WARNING, "%s: Connection lost", "conn-x")
    assert f.filter(nxt) and nxt.getMessage() == "conn-x: Connection lost [997 similar lines suppressed]"


def test_our_info_lines_are_never_limited() -> None:
    f = logs.RateLimit(window_s=10.0, burst=3, now=lambda: 0.0)
    dead = [_record("worker.outputs", logging.INFO, "dead-lettering %s", i) for i in range(100)]
    assert all(f.filter(r) for r in dead)
    kafka_info = [_record("kafka.coordinator", logging.INFO, "Discovered coordinator %s", i) for i in range(100)]
    assert sum(f.filter(r) for r in kafka_info) == 3


def test_configure_installs_the_limit() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("INFO", json_format=True)
        (handler,) = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        for i in range(500):
            logging.getLogger("kafka.coordinator").error("Error sending FindCoordinatorRequest to node %s", i)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert len(stream.getvalue().splitlines()) == 3
