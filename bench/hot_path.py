"""The worker's Python cost per event, without a broker or Redis: the real poll loop and steps (decode,
cache lookup, build, publish, offsets, commit) over in-memory fakes (worker/testing.py), every event a
cache hit. What is left when Kafka and Redis cost nothing: the ceiling of the cache-hit replay, and the
thing to profile (`py-spy record -o hot.svg -- python -m bench.hot_path`).

    python -m bench.hot_path [--events 20000] [--repeat 3] [--evidence]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from worker.contract import compose_text
from worker.decode import cache_key, content_hash
from worker.engine import Tag
from worker.evidence import EvidenceSpan
from worker.loop import build_loop
from worker.metrics import Metrics
from worker.settings import KafkaSettings, load_settings
from worker.tagging import fields_print, tags_to_cache
from worker.testing import FakeCache, FakeClock, FakeConsumer, FakeEngine, FakePublisher, ManualExecutor

TITLES = [
    "Alisha Solid Women's Cycling Shorts",
    "FabHomeDecor Fabric Double Sofa Bed",
    "AW Bellies",
    "Sicons Dog Shampoo",
]
TAGS = [Tag("category:Clothing", 0.97), Tag("category:Clothing > Women's Clothing", 0.91), Tag("brand:Alisha", 0.88)]


def with_evidence(title: str) -> list[Tag]:
    """TAGS with evidence spans into `title` (as the cache holds them since issue 13)."""
    words = title.split()
    return [Tag(t.tag, t.score, (EvidenceSpan("title", 0, len(words[0]), words[0]),)) for t in TAGS]


def replay(events: int, partitions: int = 4, evidence: bool = False) -> tuple[float, float]:
    """(events per wall second, events per CPU second of this thread) of an all-hit replay through
    the real loop, batch steps run inline. On shared cores the CPU-time rate is the steadier one."""
    clock = FakeClock()
    kafka = KafkaSettings(input_topic="in", output_topic="out", dlq_topic="dlq", commit_interval_ms=200)
    settings = load_settings(kafka=kafka)
    consumer, publisher, engine, cache = FakeConsumer("in", partitions), FakePublisher(clock), FakeEngine(), FakeCache()
    for i in range(events):
        title = f"{TITLES[i % len(TITLES)]} {i % 5000}"
        key = cache_key(settings.redis.key_prefix, engine.model_version, content_hash(compose_text(title)))
        cache.data[key] = tags_to_cache(with_evidence(title) if evidence else TAGS, (), fields_print(title, None))
        value = json.dumps({"product_id": f"p-{i}", "title": title}).encode()
        consumer.produce(value, partition=i % partitions, key=f"p-{i}".encode(), ts=1_750_000_000_000)
    executor = ManualExecutor()
    executor.auto = True
    # Metrics on the real clock, as in the worker: their timing is part of the cost per event.
    loop = build_loop(settings, engine, cache, lambda: consumer, publisher, clock, metrics=Metrics(), executor=executor)
    assert loop.start()
    started, cpu_started = time.perf_counter(), time.thread_time()
    while len(publisher.acked) < events:
        loop.step()
    elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    assert engine.runs == 0, "a cache hit reached the model"
    return events / elapsed, events / cpu


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hot_path", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--evidence", action="store_true", help="cache entries carry evidence spans (issue 13)")
    args = p.parse_args(argv)
    runs = [replay(args.events, evidence=args.evidence) for _ in range(args.repeat)]
    print(
        json.dumps(
            {
                "events": args.events,
                "wall_eps": sorted(round(w) for w, _ in runs),
                "cpu_eps": sorted(round(c) for _, c in runs),
                "best_cpu_eps": round(max(c for _, c in runs)),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
