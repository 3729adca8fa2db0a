"""Step 2, tagging: cache lookup (`CacheLookup`, on the poll thread, so hits skip batching and
tokenizing), then for a batch of misses inference and cache fill (`TagBatch`, on the batch thread).

Identical content is looked up and inferred once. An inference failure is isolated by splitting
the batch (bisection): only the item that makes the model fail is rejected (`inference_failed`),
the rest is tagged. Pure logic over two Protocols (`Engine`, `Cache`), tested with fakes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from worker.batcher import padded_tokens
from worker.cache import Cache
from worker.decode import Invalid, cache_key
from worker.engine import Encoded, Outputs, Tag
from worker.metrics import Metrics
from worker.records import Parsed, Rejected, Valid, where

log = logging.getLogger(__name__)


class InferenceFault(Exception):
    """Every item of a batch failed on its own: the engine is broken, not the input (a fault)."""


class Engine(Protocol):
    """What the loop needs of `worker.engine.TagEngine`."""

    @property
    def model_version(self) -> str: ...

    @property
    def taxonomy_version(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> list[Encoded]: ...

    def run(self, items: list[Encoded]) -> Outputs: ...

    def decode(self, items: list[Encoded], outputs: Outputs) -> list[list[Tag]]: ...


@dataclass(frozen=True)
class Tagged:
    record: Parsed
    tags: list[Tag]
    cached: bool


def tags_to_cache(tags: list[Tag]) -> bytes:
    return orjson.dumps([[t.tag, float(t.score)] for t in tags])


def tags_from_cache(raw: bytes) -> list[Tag] | None:
    """None for anything that is not our format: a corrupt entry is a miss, never an error."""
    try:
        return [Tag(str(t), float(s)) for t, s in orjson.loads(raw)]
    except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
        return None


def _unique(items: list[Parsed]) -> dict[str, int]:
    """content hash -> index of its first item"""
    first: dict[str, int] = {}
    for i, r in enumerate(items):
        first.setdefault(r.chash, i)
    return first


class CacheLookup:
    """Split parsed records into cache hits (tagged, ready to publish) and misses (to infer).
    `model` is read on every call: with a `worker.reload.ModelHolder` lookups follow the live model."""

    def __init__(self, cache: Cache, key_prefix: str, model: Engine, metrics: Metrics) -> None:
        self.cache, self.key_prefix, self.model, self.metrics = cache, key_prefix, model, metrics

    def __call__(self, items: list[Parsed]) -> tuple[list[Tagged], list[Parsed]]:
        if not items:
            return [], []
        first = _unique(items)
        version = self.model.model_version
        keys = [cache_key(self.key_prefix, version, h) for h in first]
        with self.metrics.timed("cache_get"):
            raw = self.cache.get_many(keys)
        found = {h: tags_from_cache(v) for h, v in zip(first, raw, strict=True) if v is not None}
        hits, misses = [], []
        for r in items:
            tags = found.get(r.chash)
            if tags is None:
                misses.append(r)
            else:
                hits.append(Tagged(r, tags, cached=True))
        self.metrics.cache_hits.inc(len(hits))
        self.metrics.cache_misses.inc(len(misses))
        return hits, misses


class TagBatch:
    """Infer a batch of cache misses (each distinct text once) and fill the cache. The loop passes
    the engine the batch was prepared with (a hot reload switches engines between batches)."""

    def __init__(self, engine: Engine, cache: Cache, key_prefix: str, metrics: Metrics) -> None:
        self.engine, self.cache, self.key_prefix, self.metrics = engine, cache, key_prefix, metrics

    def __call__(self, batch: list[Valid], engine: Engine | None = None) -> list[Tagged | Rejected]:
        if not batch:
            return []
        engine = engine or self.engine
        first = _unique(list(batch))
        unique = [batch[i] for i in first.values()]
        inferred = dict(zip(first, self._infer(unique, engine), strict=True))
        fresh = {
            cache_key(self.key_prefix, engine.model_version, h): tags_to_cache(t)
            for h, t in inferred.items()
            if not isinstance(t, Invalid)
        }
        if fresh:
            with self.metrics.timed("cache_set"):
                self.cache.set_many(fresh)
        out: list[Tagged | Rejected] = []
        for r in batch:
            result = inferred[r.chash]
            if isinstance(result, Invalid):
                out.append(Rejected(r.source, r.received, result))
            else:
                out.append(Tagged(r, result, cached=False))
        return out

    def _infer(self, items: list[Valid], engine: Engine) -> list[list[Tag] | Invalid]:
        encoded = [r.encoded for r in items]
        self.metrics.batch_tokens.observe(padded_tokens(max(len(e) for e in encoded), len(encoded)))
        started = self.metrics.now()
        with self.metrics.timed("inference"):
            results = self._bisect(items, engine)
        if len(items) > 1 and all(isinstance(r, Invalid) for r in results):
            raise InferenceFault(f"all {len(items)} items failed inference one by one")
        self.metrics.inference.observe(self.metrics.now() - started)
        return results

    def _bisect(self, items: list[Valid], engine: Engine) -> list[list[Tag] | Invalid]:
        encoded = [r.encoded for r in items]
        try:
            return list(engine.decode(encoded, engine.run(encoded)))
        except Exception as exc:
            if len(items) == 1:
                log.warning("inference failed on %s: %s: %s", where(items[0].source), type(exc).__name__, exc)
                return [Invalid("inference_failed", f"{type(exc).__name__}: {str(exc)[:1000]}")]
            half = len(items) // 2
            return self._bisect(items[:half], engine) + self._bisect(items[half:], engine)
