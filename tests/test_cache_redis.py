"""RedisCache against a real Redis (reused at 127.0.0.1:6379 or started by the fixture)."""

import redis

from scripts.local_services import free_port
from worker.cache import RedisCache
from worker.metrics import Metrics


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_roundtrip_with_ttl(redis_url: str, unique: str) -> None:
    cache = RedisCache.from_url(
        redis_url, password=None, timeout_s=1.0, ttl_s=60, metrics=Metrics(), retry_interval_s=1.0
    )
    keys = [f"test-{unique}:{i}" for i in range(3)]
    assert cache.get_many(keys) == [None, None, None]
    cache.set_many({keys[0]: b"a", keys[2]: b"c"})
    assert cache.get_many(keys) == [b"a", None, b"c"]
    ttl = redis.Redis.from_url(redis_url).ttl(keys[0])
    assert 0 < ttl <= 60
    assert not cache.degraded


def test_outage_degrades_then_recovers(redis_url: str, unique: str) -> None:
    metrics, clock = Metrics(), Clock()
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=0.2, socket_connect_timeout=0.2)
    cache = RedisCache(dead, ttl_s=60, metrics=metrics, retry_interval_s=5.0, now=clock)
    assert cache.get_many(["k1", "k2"]) == [None, None]  # no exception: tagging goes on uncached
    assert cache.degraded
    assert metrics.cache_errors._value.get() == 1
    cache.set_many({"k1": b"x"})  # skipped while degraded: no second error
    assert metrics.cache_errors._value.get() == 1
    # Redis "comes back": point the client at the live server; after the retry interval it is used.
    cache.client = redis.Redis.from_url(redis_url)
    key = f"test-{unique}:back"
    clock.t += 5.0
    cache.set_many({key: b"v"})
    assert not cache.degraded
    assert cache.get_many([key]) == [b"v"]
    assert metrics.cache_degraded._value.get() == 0


def test_degraded_clears_when_redis_is_back_without_any_traffic(redis_url: str) -> None:
    # A quiet topic makes no get/set calls: the loop's health tick probes instead.
    metrics, clock = Metrics(), Clock()
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=0.2, socket_connect_timeout=0.2)
    cache = RedisCache(dead, ttl_s=60, metrics=metrics, retry_interval_s=5.0, now=clock)
    cache.get_many(["k"])
    assert cache.degraded
    cache.client = redis.Redis.from_url(redis_url)
    cache.probe()
    assert cache.degraded, "not probed again before the retry interval"
    clock.t += 5.0
    cache.probe()
    assert not cache.degraded and metrics.cache_degraded._value.get() == 0
