"""Prometheus metrics of one worker process, on their own registry (tests create several)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)
STAGES = (
    "poll",
    "decode",
    "tokenize",
    "cache_get",
    "graph_wait",
    "inference",
    "cache_set",
    "serialize",
    "produce",
    "commit",
    "shadow",
    "evidence",
    "overrides",
    "review",
    "feedback",
)
JACCARD_BUCKETS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.999, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, now: Callable[[], float] = time.monotonic) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.now = now
        # products per micro-batch (valid and dead-lettered)
        self.batch_size = Histogram("tagger_batch_size", "Records per micro-batch.", buckets=SIZE_BUCKETS, registry=r)
        # padded tokens (longest x items) of a micro-batch's cache misses: the unit of the token budget
        self.batch_tokens = Histogram(
            "tagger_batch_tokens", "Padded tokens inferred per micro-batch.", buckets=TOKEN_BUCKETS, registry=r
        )
        # consumed -> batch processing starts (time spent waiting in the batcher and the in-flight queue)
        self.queue_wait = Histogram(
            "tagger_queue_wait_seconds", "Wait from consume to batch start.", buckets=LATENCY_BUCKETS, registry=r
        )
        # one ONNX Runtime pass over a micro-batch's cache misses
        self.inference = Histogram(
            "tagger_inference_seconds", "Inference time per micro-batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        # record timestamp (producer's CreateTime) -> tag event acknowledged by Kafka
        self.end_to_end = Histogram(
            "tagger_end_to_end_seconds",
            "Product event timestamp to tag event ack.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # wall time per pipeline stage (STAGES), observed with `timed(stage)`
        self.stage = Histogram(
            "tagger_stage_seconds", "Time per pipeline stage.", ["stage"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.consumed = Counter("tagger_consumed", "Records consumed from the input topic.", registry=r)
        self.produced = Counter("tagger_produced", "Tag events acknowledged by Kafka.", registry=r)
        self.cache_hits = Counter("tagger_cache_hits", "Products served from the Redis cache.", registry=r)
        self.cache_misses = Counter("tagger_cache_misses", "Products inferred (not in cache).", registry=r)
        self.cache_errors = Counter("tagger_cache_errors", "Redis errors (the worker ran uncached).", registry=r)
        self.dead_letters = Counter("tagger_dead_letters", "Records dead-lettered, by reason.", ["reason"], registry=r)
        self.produce_retries = Counter("tagger_produce_retries", "Tag event batches re-sent.", registry=r)
        self.commit_errors = Counter("tagger_commit_errors", "Offset commits that failed.", registry=r)
        self.lag = Gauge(
            "tagger_consumer_lag", "Highwater minus committed offset, per partition.", ["partition"], registry=r
        )
        self.in_flight = Gauge("tagger_in_flight_batches", "Micro-batches being tagged or published.", registry=r)
        self.paused = Gauge("tagger_paused_partitions", "Partitions paused by backpressure.", registry=r)
        self.ready = Gauge("tagger_ready", "1 when consuming normally.", registry=r)
        self.cache_degraded = Gauge("tagger_cache_degraded", "1 while Redis is unreachable.", registry=r)
        # 1 for the model version serving as `role` (live, shadow); a replaced version's series is removed
        self.model_info = Gauge("tagger_model_info", "Model version serving, by role.", ["version", "role"], registry=r)
        # hot reloads that switched the live model (worker/reload.py)
        self.model_reloads = Counter("tagger_model_reloads", "Model hot reloads that took effect.", registry=r)
        # new artifacts refused (hash mismatch, half-written, cannot load); the old model keeps serving
        self.model_reload_failures = Counter(
            "tagger_model_reload_failures", "New model artifacts refused by hot reload.", registry=r
        )

        # shadow model (worker/shadow.py): agreement with the live model on the same items
        self.shadow_items = Counter("tagger_shadow_items", "Items tagged by the shadow model.", registry=r)
        self.shadow_identical = Counter(
            "tagger_shadow_identical", "Shadow items whose tags equal the live model's.", registry=r
        )
        self.shadow_added = Counter("tagger_shadow_tags_added", "Tags the shadow adds to the live tags.", registry=r)
        self.shadow_removed = Counter("tagger_shadow_tags_removed", "Live tags the shadow model drops.", registry=r)
        self.shadow_jaccard = Histogram(
            "tagger_shadow_jaccard",
            "Per item and facet Jaccard of live vs shadow tags.",
            ["facet"],
            buckets=JACCARD_BUCKETS,
            registry=r,
        )
        # batches the shadow skipped because they waited longer than its budget
        self.shadow_skipped = Counter(
            "tagger_shadow_skipped_batches", "Batches not shadowed (over budget).", registry=r
        )
        self.shadow_failures = Counter("tagger_shadow_failures", "Batches the shadow model failed on.", registry=r)

        # human review loop (issue 13): tag events sent without overrides because Redis was unavailable
        self.overrides_unavailable = Counter(
            "tagger_overrides_unavailable", "Tag events sent model-only (Redis overrides unavailable).", registry=r
        )
        # tag events of products that have overrides (rejected / added / accepted tags applied)
        self.overrides_applied = Counter("tagger_overrides_applied", "Tag events with human overrides.", registry=r)
        # items also published to the review topic, by reason (an item with several reasons counts once per reason)
        self.review_routed = Counter(
            "tagger_review_routed", "Items routed to review, by reason.", ["reason"], registry=r
        )
        # tagged items considered for review (the denominator of the routed share)
        self.review_considered = Counter("tagger_review_considered", "Tagged items checked for review.", registry=r)
        # feedback records consumed, by outcome (applied, or a dead-letter reason)
        self.feedback = Counter("tagger_feedback_records", "Feedback records, by outcome.", ["outcome"], registry=r)
        # attempts to write feedback overrides that failed (Redis unavailable; retried, not committed)
        self.feedback_retries = Counter("tagger_feedback_retries", "Failed feedback override writes.", registry=r)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Observe the block's wall time as `tagger_stage_seconds{stage=...}` (also when it raises)."""
        started = self.now()
        try:
            yield
        finally:
            self.stage.labels(stage).observe(self.now() - started)
