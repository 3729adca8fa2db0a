"""Kafka adapters: consumer and publisher built from settings (kafka-python). No I/O at import
or in constructors of our classes; connecting is an explicit, retried step."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from worker.settings import KafkaSettings

log = logging.getLogger(__name__)


class SendFuture(Protocol):
    is_done: bool
    exception: BaseException | None

    def succeeded(self) -> bool: ...


class Publisher(Protocol):
    """Send records; `flush` waits for acknowledgements; `reset` replaces a broken client."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> SendFuture: ...

    def flush(self, timeout_s: float) -> None: ...

    def reset(self) -> None: ...

    def close(self, timeout_s: float) -> None: ...


def client_config(s: KafkaSettings) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "bootstrap_servers": [b.strip() for b in s.bootstrap_servers.split(",") if b.strip()],
        "client_id": s.client_id,
        "security_protocol": s.security_protocol,
        "bootstrap_timeout_ms": int(s.bootstrap_timeout_s * 1000),
        "reconnect_backoff_max_ms": int(s.retry_backoff_max_s * 1000),
    }
    if s.sasl_mechanism:
        cfg["sasl_mechanism"] = s.sasl_mechanism
        cfg["sasl_plain_username"] = s.sasl_username
        cfg["sasl_plain_password"] = s.sasl_password.get_secret_value() if s.sasl_password else None
    if s.ssl_cafile:
        cfg["ssl_cafile"] = str(s.ssl_cafile)
    return cfg


def make_consumer(s: KafkaSettings) -> KafkaConsumer:
    """Connects (raises NoBrokersAvailable / KafkaTimeoutError when the cluster is unreachable)."""
    return KafkaConsumer(
        **client_config(s),
        group_id=s.group_id,
        enable_auto_commit=False,  # offsets are committed only after the tag events are acknowledged
        auto_offset_reset="earliest",
        max_poll_records=s.max_poll_records,
        max_poll_interval_ms=s.max_poll_interval_ms,
        session_timeout_ms=s.session_timeout_ms,
        heartbeat_interval_ms=s.heartbeat_interval_ms,
        fetch_max_bytes=s.fetch_max_bytes,
        fetch_max_wait_ms=s.fetch_max_wait_ms,
    )


class KafkaPublisher:
    """Idempotent producer with acks=all; recreated on demand (a broker that lost the producer id
    rejects every later send from the old client)."""

    def __init__(self, s: KafkaSettings) -> None:
        self.settings = s
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _client(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(
                    **client_config(self.settings),
                    acks="all",
                    linger_ms=self.settings.linger_ms,
                    batch_size=262_144,
                    max_request_size=4 * 1_048_576,
                )
            return self._producer

    def connect(self) -> None:
        self._client()

    def send(self, topic: str, key: bytes | None, value: bytes) -> SendFuture:
        return self._client().send(topic, key=key, value=value)  # type: ignore[no-any-return]

    def flush(self, timeout_s: float) -> None:
        self._client().flush(timeout=timeout_s)

    def reset(self) -> None:
        with self._lock:
            old, self._producer = self._producer, None
        if old is not None:
            try:
                old.close(timeout=1)
            except KafkaError as exc:  # closing a broken client may fail; it is discarded anyway
                log.debug("closing broken producer: %s", exc)

    def close(self, timeout_s: float) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=timeout_s)
                self._producer = None
