"""Result cache: Redis behind a small Protocol. A Redis outage degrades to uncached tagging."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import redis

from worker.metrics import Metrics

log = logging.getLogger(__name__)


class Cache(Protocol):
    """Get/set many values; never raises for an unavailable backend (returns misses instead)."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def set_many(self, values: Mapping[str, bytes]) -> None: ...

    @property
    def degraded(self) -> bool: ...

    def probe(self) -> None:
        """While degraded and due for a retry, check the backend so `degraded` clears on recovery
        even when no product arrives (a quiet topic must not report an outage that is over)."""


class NoCache:
    degraded = False

    def probe(self) -> None:
        pass

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [None] * len(keys)

    def set_many(self, values: Mapping[str, bytes]) -> None:
        pass


class Outage:
    """After a Redis error, skip Redis for `retry_interval_s`, then try again: an outage costs one
    socket timeout per interval, not one per call. `failed` and `recovered` say whether the state
    changed (the caller logs once per outage)."""

    def __init__(self, retry_interval_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self.retry_interval_s, self.now = retry_interval_s, now
        self.retry_at: float | None = None

    @property
    def degraded(self) -> bool:
        return self.retry_at is not None

    def available(self) -> bool:
        return self.retry_at is None or self.now() >= self.retry_at

    def failed(self) -> bool:
        began = self.retry_at is None
        self.retry_at = self.now() + self.retry_interval_s
        return began

    def recovered(self) -> bool:
        was, self.retry_at = self.retry_at is not None, None
        return was


class RedisCache:
    """Pipelined MGET / SET EX. After an error, skip Redis for `retry_interval_s`, then try again."""

    def __init__(
        self,
        client: redis.Redis,
        ttl_s: int,
        metrics: Metrics,
        retry_interval_s: float = 5.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.ttl_s, self.metrics = client, ttl_s, metrics
        self.outage = Outage(retry_interval_s, now)

    @classmethod
    def from_url(
        cls, url: str, *, password: str | None, timeout_s: float, ttl_s: int, metrics: Metrics, retry_interval_s: float
    ) -> RedisCache:
        # from_url does not connect: no network I/O until the first command.
        client = redis.Redis.from_url(
            url,
            password=password,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        return cls(client, ttl_s, metrics, retry_interval_s)

    @property
    def degraded(self) -> bool:
        return self.outage.degraded

    def _available(self) -> bool:
        return self.outage.available()

    def _failed(self, op: str, exc: Exception) -> None:
        if self.outage.failed():
            log.warning("redis %s failed, tagging without the cache: %s", op, exc)
        self.metrics.cache_errors.inc()
        self.metrics.cache_degraded.set(1)

    def _recovered(self) -> None:
        if self.outage.recovered():
            log.info("redis is back; cache enabled")
            self.metrics.cache_degraded.set(0)

    def probe(self) -> None:
        if not self.outage.degraded or not self.outage.available():
            return
        try:
            self.client.ping()
        except (redis.RedisError, OSError) as exc:
            self._failed("PING", exc)
            return
        self._recovered()

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or not self._available():
            return [None] * len(keys)
        try:
            values = self.client.mget(list(keys))
        except (redis.RedisError, OSError) as exc:
            self._failed("MGET", exc)
            return [None] * len(keys)
        self._recovered()
        return [v if isinstance(v, bytes | None) else str(v).encode() for v in values]

    def set_many(self, values: Mapping[str, bytes]) -> None:
        if not values or not self._available():
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, value in values.items():
                pipe.set(key, value, ex=self.ttl_s)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed("SET", exc)
            return
        self._recovered()
