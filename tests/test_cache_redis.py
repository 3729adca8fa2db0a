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


def test_overrides_store_reads_decisions_and_marks_products_in_one_script(redis_url: str, unique: str) -> None:
    from datetime import UTC, datetime

    from schemas.events import TagFeedback
    from worker.overrides import RedisOverrides

    client = redis.Redis.from_url(redis_url)
    store = RedisOverrides(client, f"test-{unique}:", Metrics(), known_ttl_s=120)
    at = datetime(2026, 11, 30, tzinfo=UTC)
    store.put(
        [
            TagFeedback(product_id="p2", action="reject", tag="color:red", reviewer="ann", at=at),
            TagFeedback(product_id="p2", action="add", tag="color:blue", reviewer="ann", at=at),
            TagFeedback(product_id="p4", action="accept", tag="brand:Acme", reviewer="bob", at=at),
        ]
    )
    client.hset(store.key("p3"), "color:green", b"not json")  # an unreadable decision is ignored
    assert store.known(["p1", "p2"]) == set()
    found = store.fetch(["p1", "p2", "p3", "p4", "p5"])
    assert found is not None
    assert {pid: {t: o.action for t, o in ov.items()} for pid, ov in found.items()} == {
        "p2": {"color:red": "reject", "color:blue": "add"},
        "p4": {"brand:Acme": "accept"},
    }
    assert found["p4"]["brand:Acme"].reviewer == "bob"
    # every fetched product is now known to have been tagged, with a TTL
    assert store.known(["p1", "p5", "p6"]) == {"p1", "p5"}
    assert 0 < client.ttl(store.tagged_key("p3")) <= 120
    # the script is loaded again after a SCRIPT FLUSH (EVALSHA -> NOSCRIPT -> load)
    client.script_flush()
    assert store.fetch(["p2"]) == {"p2": found["p2"]}


def test_overrides_store_outage_means_model_only_then_recovers(redis_url: str, unique: str) -> None:
    from worker.overrides import RedisOverrides

    clock = Clock()
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=0.2, socket_connect_timeout=0.2)
    store = RedisOverrides(dead, f"test-{unique}:", Metrics(), retry_interval_s=5.0, now=clock)
    assert store.fetch(["p1"]) is None
    store.client = redis.Redis.from_url(redis_url)
    assert store.fetch(["p1"]) is None, "Redis is skipped until the retry interval has passed"
    clock.t += 5.0
    assert store.fetch(["p1"]) == {}
    assert store.known(["p1"]) == {"p1"}
