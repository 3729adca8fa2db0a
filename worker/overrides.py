"""Corrections that stick: reviewers' decisions kept in Redis per product and applied to every later
tag event of that product (cache hits, fresh inference, any model version: overrides are not part
of the cache key).

Redis layout (under the cache's key prefix):
- `{prefix}overrides:{product_id}`: a hash, tag -> JSON `{"action", "reviewer", "at", "feedback_id"}`;
  the last decision on a tag wins (feedback is keyed by product id, so it arrives in order);
- `{prefix}tagged:{product_id}`: a marker that this system published a tag event for the product,
  with a TTL (`TAGGER_FEEDBACK__KNOWN_PRODUCT_TTL_S`, refreshed by every tag event; feedback on
  any other product is dead-lettered as `unknown_product`).

`apply_overrides` is pure. The store is behind a Protocol; Redis errors never escape it on the tag
path (tag events go out model-only, counted), while writing feedback raises `OverridesUnavailable`
so the feedback record is retried, not committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson
import redis

from schemas.events import TagFeedback
from schemas.training import facet_of
from worker.cache import Outage
from worker.contract import slot_of
from worker.engine import Tag
from worker.metrics import Metrics
from worker.records import Rejected
from worker.tagging import Tagged, TagResult

log = logging.getLogger(__name__)
HUMAN = "human"


class OverridesUnavailable(Exception):
    """Redis could not be read or written."""


@dataclass(frozen=True)
class Override:
    action: str  # accept | reject | add
    reviewer: str
    at: str
    feedback_id: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"action": self.action, "reviewer": self.reviewer, "at": self.at, "feedback_id": self.feedback_id}
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Override | None:
        try:
            d = orjson.loads(raw)
            return cls(str(d["action"]), str(d["reviewer"]), str(d["at"]), d.get("feedback_id"))
        except (ValueError, TypeError, KeyError):
            return None

    @classmethod
    def of(cls, fb: TagFeedback) -> Override:
        return cls(fb.action, fb.reviewer, fb.at.isoformat().replace("+00:00", "Z"), fb.feedback_id)


Overrides = Mapping[str, Override]  # tag -> the last decision on it


def apply_overrides(
    tags: Sequence[Tag], candidates: Sequence[Tag], overrides: Overrides, single_slots: frozenset[str] = frozenset()
) -> tuple[list[Tag], list[Tag]]:
    """(tags, candidates) with a product's overrides applied: rejected tags removed (from the
    candidates too), added and accepted tags present with `source="human"` and score 1.0 (a human
    decision, not a model probability). An added or accepted tag in a single-valued slot replaces the
    model's value of that slot. Highest score first."""
    if not overrides:
        return list(tags), list(candidates)
    human = {t for t, o in overrides.items() if o.action in ("accept", "add")}
    drop = {t for t, o in overrides.items() if o.action == "reject"}
    taken = {slot_of(t) for t in human if slot_of(t) in single_slots}
    by_tag = {t.tag: t for t in tags}
    kept = [t for t in tags if t.tag not in drop and t.tag not in human and slot_of(t.tag) not in taken]
    decided = [(by_tag.get(t) or Tag(t, 1.0))._replace(score=1.0, source=HUMAN) for t in sorted(human)]
    out = sorted(decided + kept, key=lambda t: -t.score)
    near = [c for c in candidates if c.tag not in drop and c.tag not in human]
    return out, near


class OverrideStore(Protocol):
    """Overrides by product id, and which products were tagged."""

    def fetch(self, product_ids: Sequence[str]) -> dict[str, dict[str, Override]] | None:
        """Overrides of these products (also records them as tagged); None when Redis is unavailable."""

    def known(self, product_ids: Sequence[str]) -> set[str]:
        """Which of these products were ever tagged. Raises OverridesUnavailable."""

    def put(self, feedback: Sequence[TagFeedback]) -> None:
        """Write the decisions, in order. Raises OverridesUnavailable."""


# KEYS: N override hashes, then the N products' tagged markers; ARGV[1]: the markers' TTL. Sets every
# marker and returns only the hashes that exist, as {index, {field, value, ...}, ...}: most products
# have no override, and an empty reply per product would cost the client more than the lookup.
_FETCH = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local h = redis.call('HGETALL', KEYS[i])
  if #h > 0 then
    out[#out + 1] = i
    out[#out + 1] = h
  end
  redis.call('SET', KEYS[n + i], '1', 'EX', ARGV[1])
end
return out
"""


class RedisOverrides:
    """One round trip per call (on the tag path a Lua script: like the cache's MGET it needs every
    key on one Redis node, so no Redis Cluster). After a read error the tag path skips Redis for
    `retry_interval_s` (as the cache does), so an outage costs one timeout per interval."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        metrics: Metrics,
        retry_interval_s: float = 5.0,
        now: Callable[[], float] = time.monotonic,
        known_ttl_s: int = 90 * 24 * 3600,
    ) -> None:
        self.client, self.prefix, self.metrics = client, prefix, metrics
        self.known_ttl_s = known_ttl_s
        self.outage = Outage(retry_interval_s, now)
        self._fetch = client.register_script(_FETCH)  # EVALSHA; loads the script again on NOSCRIPT

    def key(self, product_id: str) -> str:
        return f"{self.prefix}overrides:{product_id}"

    def tagged_key(self, product_id: str) -> str:
        return f"{self.prefix}tagged:{product_id}"

    def fetch(self, product_ids: Sequence[str]) -> dict[str, dict[str, Override]] | None:
        if not product_ids:
            return {}
        if not self.outage.available():
            return None
        try:
            # One command for the whole batch: a pipeline of two commands per product cost ~15 us
            # of client Python per product, the script ~2 us (see _FETCH).
            keys = [self.key(pid) for pid in product_ids] + [self.tagged_key(pid) for pid in product_ids]
            found = self._fetch(keys=keys, args=[self.known_ttl_s], client=self.client)
        except (redis.RedisError, OSError) as exc:
            if self.outage.failed():
                log.warning("redis overrides unavailable, tag events go out model-only: %s", exc)
            return None
        if self.outage.recovered():
            log.info("redis overrides available again")
        out: dict[str, dict[str, Override]] = {}
        for i in range(0, len(found), 2):  # [index (1-based), [field, value, ...], ...]
            flat = found[i + 1]
            parsed = {
                _text(flat[j]): o for j in range(0, len(flat), 2) if (o := Override.from_json(flat[j + 1])) is not None
            }
            if parsed:
                out[product_ids[int(found[i]) - 1]] = parsed
        return out

    def known(self, product_ids: Sequence[str]) -> set[str]:
        if not product_ids:
            return set()
        try:
            flags = self.client.mget([self.tagged_key(pid) for pid in product_ids])
        except (redis.RedisError, OSError) as exc:
            raise OverridesUnavailable(f"MGET: {exc}") from exc
        return {pid for pid, flag in zip(product_ids, flags, strict=True) if flag is not None}

    def put(self, feedback: Sequence[TagFeedback]) -> None:
        if not feedback:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for fb in feedback:
                pipe.hset(self.key(fb.product_id), fb.tag, Override.of(fb).to_json())
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise OverridesUnavailable(f"HSET: {exc}") from exc


def _text(b: bytes | str) -> str:
    return b.decode() if isinstance(b, bytes) else b


class ApplyOverrides:
    """On the batch thread, before the tag events are built: the batch's products' overrides in one
    Redis round trip, applied to every tagged outcome. Without Redis the events go out model-only
    (counted; the store logs the outage once)."""

    def __init__(self, store: OverrideStore, metrics: Metrics) -> None:
        self.store, self.metrics = store, metrics

    def __call__(
        self, outcomes: list[Tagged | Rejected], single_slots: frozenset[str] = frozenset()
    ) -> tuple[list[Tagged | Rejected], dict[str, set[str]]]:
        """Outcomes with overrides applied, and per product the facets a reviewer decided on."""
        pids = list(dict.fromkeys(o.record.product.product_id for o in outcomes if isinstance(o, Tagged)))
        if not pids:
            return outcomes, {}
        with self.metrics.timed("overrides"):
            found = self.store.fetch(pids)
        if found is None:
            self.metrics.overrides_unavailable.inc(sum(1 for o in outcomes if isinstance(o, Tagged)))
            return outcomes, {}
        out: list[Tagged | Rejected] = []
        for o in outcomes:
            decided = found.get(o.record.product.product_id) if isinstance(o, Tagged) else None
            if not decided or not isinstance(o, Tagged):
                out.append(o)
                continue
            tags, near = apply_overrides(o.tags, o.candidates, decided, single_slots)
            out.append(Tagged(o.record, TagResult(tags, near, o.result.fields), o.cached))
            self.metrics.overrides_applied.inc()
        return out, {pid: {facet_of(t) for t in ov} for pid, ov in found.items()}
