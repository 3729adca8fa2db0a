"""Step 2, tagging a batch: cache lookup, inference of the misses, cache fill.

An inference failure is isolated by splitting the batch (bisection): only the item that makes the
model fail is rejected (`inference_failed`), the rest is tagged. Pure logic over two Protocols
(`Engine`, `Cache`): unit-tested with `worker.testing.FakeEngine`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import orjson

from worker.batcher import padded_tokens
from worker.cache import Cache
from worker.decode import Invalid, cache_key
from worker.engine import Encoded, Outputs, Tag
from worker.metrics import Metrics
from worker.records import Rejected, Valid, where

log = logging.getLogger(__name__)


class InferenceFault(Exception):
    """Every item of a batch failed on its own: the engine is broken, not the input (a fault)."""


class Engine(Protocol):
    """What the loop needs of `worker.engine.TagEngine`."""

    @property
    def model_version(self) -> str: ...

    def encode(self, texts: list[str]) -> list[Encoded]: ...

    def run(self, items: list[Encoded]) -> Outputs: ...

    def decode(self, items: list[Encoded], outputs: Outputs) -> list[list[Tag]]: ...


@dataclass(frozen=True)
class Tagged:
    record: Valid
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


class TagBatch:
    def __init__(self, engine: Engine, cache: Cache, key_prefix: str, metrics: Metrics) -> None:
        self.engine, self.cache, self.key_prefix, self.metrics = engine, cache, key_prefix, metrics
        self.model_version = engine.model_version

    def __call__(self, batch: list[Valid]) -> list[Tagged | Rejected]:
        m = self.metrics
        # One lookup and one inference per distinct content: a burst of the same product (or the
        # same text under several ids) is inferred once.
        first: dict[str, int] = {}
        for i, r in enumerate(batch):
            first.setdefault(r.chash, i)
        unique = [batch[i] for i in first.values()]
        keys = [cache_key(self.key_prefix, self.model_version, r.chash) for r in unique]
        with m.timed("cache_get"):
            raw = self.cache.get_many(keys)
        hits = [tags_from_cache(v) if v is not None else None for v in raw]
        misses = [i for i, h in enumerate(hits) if h is None]
        m.cache_hits.inc(len(unique) - len(misses))
        m.cache_misses.inc(len(misses))
        inferred = dict(zip(misses, self._infer([unique[i] for i in misses]), strict=True)) if misses else {}
        fresh = {keys[i]: tags_to_cache(t) for i, t in inferred.items() if not isinstance(t, Invalid)}
        if fresh:
            with m.timed("cache_set"):
                self.cache.set_many(fresh)
        by_hash = {r.chash: j for j, r in enumerate(unique)}
        out: list[Tagged | Rejected] = []
        for r in batch:
            j = by_hash[r.chash]
            hit = hits[j]
            if hit is not None:
                out.append(Tagged(r, hit, cached=True))
            elif isinstance(result := inferred[j], Invalid):
                out.append(Rejected(r.source, r.received, result))
            else:
                out.append(Tagged(r, result, cached=False))
        return out

    def _infer(self, items: list[Valid]) -> list[list[Tag] | Invalid]:
        encoded = [r.encoded for r in items]
        self.metrics.batch_tokens.observe(padded_tokens(max(len(e) for e in encoded), len(encoded)))
        started = self.metrics.now()
        with self.metrics.timed("inference"):
            results = self._bisect(items)
        if len(items) > 1 and all(isinstance(r, Invalid) for r in results):
            raise InferenceFault(f"all {len(items)} items failed inference one by one")
        self.metrics.inference.observe(self.metrics.now() - started)
        return results

    def _bisect(self, items: list[Valid]) -> list[list[Tag] | Invalid]:
        encoded = [r.encoded for r in items]
        try:
            return list(self.engine.decode(encoded, self.engine.run(encoded)))
        except Exception as exc:
            if len(items) == 1:
                log.warning("inference failed on %s: %s: %s", where(items[0].source), type(exc).__name__, exc)
                return [Invalid("inference_failed", f"{type(exc).__name__}: {str(exc)[:1000]}")]
            half = len(items) // 2
            return self._bisect(items[:half]) + self._bisect(items[half:])
