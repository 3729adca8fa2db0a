"""Shadow model: a candidate artifact runs on the live batches and publishes its tag events to its
own topic only; agreement with the live model is measured per item so a rollout decision is a number.

Shadow work is optional by design: a batch that waited longer than the budget skips it (counted),
and a shadow failure is logged and counted, never a live fault."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.training import facet_of
from worker.metrics import Metrics
from worker.outputs import OutMessage, tag_event
from worker.records import Rejected
from worker.tagging import Engine, Tagged, TagResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Agreement:
    jaccard: dict[str, float]  # facet -> |live & shadow| / |live | shadow| over the facets either uses
    added: int  # tags the shadow gives that the live model does not
    removed: int  # live tags the shadow drops

    @property
    def identical(self) -> bool:
        return self.added == 0 and self.removed == 0


def agreement(live: Iterable[str], shadow: Iterable[str]) -> Agreement:
    """Compare one item's tag sets, facet by facet (a facet neither model uses is left out)."""
    a, b = set(live), set(shadow)
    facets = {facet_of(t) for t in a | b}
    jac = {}
    for f in sorted(facets):
        fa, fb = {t for t in a if facet_of(t) == f}, {t for t in b if facet_of(t) == f}
        jac[f] = len(fa & fb) / len(fa | fb)
    return Agreement(jac, len(b - a), len(a - b))


class ShadowRun:
    """Tag a batch's tagged outcomes again with the shadow engine; returns its tag events (to
    `topic`, never the live one) and records agreement metrics."""

    def __init__(self, engine: Engine, topic: str, budget_s: float, metrics: Metrics) -> None:
        self.engine, self.topic, self.budget_s, self.metrics = engine, topic, budget_s, metrics

    def __call__(self, outcomes: list[Tagged | Rejected], wall_time: float, waited_s: float) -> list[OutMessage]:
        """`waited_s`: how long the batch's oldest item waited before the batch started."""
        m = self.metrics
        live = [o for o in outcomes if isinstance(o, Tagged)]
        if not live:
            return []
        if waited_s > self.budget_s:  # the batch thread is behind: live latency first
            m.shadow_skipped.inc()
            return []
        try:
            with m.timed("shadow"):
                items = self.engine.encode([t.record.text for t in live])
                tags = self.engine.decode(items, self.engine.run(items))
        except Exception as exc:  # a broken candidate must never hurt live tagging
            m.shadow_failures.inc()
            log.warning("shadow model %s failed on a batch of %d: %s", self.engine.model_version, len(live), exc)
            return []
        tagged_at = datetime.fromtimestamp(wall_time, UTC).isoformat().replace("+00:00", "Z")
        out = []
        for t, shadow_tags in zip(live, tags, strict=True):
            agree = agreement((x.tag for x in t.tags), (x.tag for x in shadow_tags))
            for facet, j in agree.jaccard.items():
                m.shadow_jaccard.labels(facet).observe(j)
            m.shadow_added.inc(agree.added)
            m.shadow_removed.inc(agree.removed)
            m.shadow_identical.inc(agree.identical)
            m.shadow_items.inc()
            shadowed = Tagged(t.record, TagResult(shadow_tags), cached=False)
            out.append(
                tag_event(shadowed, self.engine.model_version, tagged_at, self.topic, self.engine.taxonomy_version)
            )
        return out
