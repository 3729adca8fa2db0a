"""The review queue: which tagged items a person should look at (pure decision), and the step that
publishes them to the review topic beside their tag events (same batch, same acknowledgement, so an
offset is committed only once both are acknowledged).

An item is routed when a model tag scores within `margin` of its threshold (above it), when a
single-valued top-level facet that most training items carry (`empty_facet_share`) has no tag, and
(with `near_misses`) when a label scores within `margin` below its threshold. Near misses are always
offered to the reviewer as candidates.
Facets a reviewer has already decided on (overrides) are not routed again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.training import facet_of
from worker.engine import Tag
from worker.evidence import ExplainBasis
from worker.metrics import Metrics
from worker.outputs import ModelId, OutMessage, review_item
from worker.overrides import HUMAN
from worker.records import Rejected
from worker.settings import ReviewSettings
from worker.tagging import Tagged


@dataclass(frozen=True)
class Reason:
    kind: str  # near_threshold | empty_facet
    facet: str
    tag: str | None = None
    score: float | None = None
    threshold: float | None = None


def review_reasons(
    tags: Sequence[Tag],
    candidates: Sequence[Tag],
    threshold: Callable[[str], float | None],
    expected_facets: Collection[str],
    margin: float,
    settled: Collection[str] = (),
    near_misses: bool = True,
) -> list[Reason]:
    """Why an item needs a person (empty: it does not). `threshold(tag)`: None for tags without one
    (extracted open-vocabulary values); `settled`: facets a reviewer decided on for this product;
    `near_misses`: whether a candidate within the margin below its threshold is a reason by itself."""
    out: list[Reason] = []
    for t in tags:
        thr = threshold(t.tag)
        f = facet_of(t.tag)
        if t.source != HUMAN and f not in settled and thr is not None and t.score - thr < margin:
            out.append(Reason("near_threshold", f, t.tag, t.score, thr))
    for c in candidates if near_misses else ():
        thr = threshold(c.tag)
        f = facet_of(c.tag)
        if f not in settled and thr is not None and thr - c.score <= margin:
            out.append(Reason("near_threshold", f, c.tag, c.score, thr))
    present = {facet_of(t.tag) for t in tags}
    for f in sorted(set(expected_facets) - present - set(settled)):
        best = next((c for c in candidates if facet_of(c.tag) == f), None)
        if best is None:
            out.append(Reason("empty_facet", f))
        else:
            out.append(Reason("empty_facet", f, best.tag, best.score, threshold(best.tag)))
    return out


class RouteReview:
    """Review items of a batch's uncertain tagged outcomes (to `topic`), counted per reason."""

    def __init__(self, settings: ReviewSettings, topic: str, metrics: Metrics) -> None:
        self.margin, self.share, self.topic, self.metrics = settings.margin, settings.empty_facet_share, topic, metrics
        self.near_misses = settings.near_misses

    def __call__(
        self,
        outcomes: Sequence[Tagged | Rejected],
        basis: ExplainBasis | None,
        settled: Mapping[str, Collection[str]],
        wall_time: float,
        model: ModelId,
    ) -> list[OutMessage]:
        if basis is None:
            return []
        expected = basis.expected_facets(self.share)
        tagged_at = datetime.fromtimestamp(wall_time, UTC).isoformat().replace("+00:00", "Z")
        out = []
        tagged = [o for o in outcomes if isinstance(o, Tagged)]
        self.metrics.review_considered.inc(len(tagged))
        for o in tagged:
            pid = o.record.product.product_id
            tags, near = o.result.scored()  # names and scores: a cache hit's evidence stays unparsed
            reasons = review_reasons(
                tags, near, basis.threshold, expected, self.margin, settled.get(pid, ()), self.near_misses
            )
            if not reasons:
                continue
            for kind in {r.kind for r in reasons}:
                self.metrics.review_routed.labels(kind).inc()
            out.append(review_item(o, [r.__dict__ for r in reasons], model, tagged_at, self.topic))
        return out
