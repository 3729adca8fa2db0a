"""What one cache hit costs the worker's Python, step by step, on real cache entries: the model tags
N real products once (with evidence and near misses, as the worker caches them), then each step of
the hit path runs over those records and entries in-process (no Kafka, no Redis), best of
`--repeat`, in microseconds of wall time per hit on an otherwise idle thread. The cache-hit replay
of `make bench` is bound by these steps plus the clients' own per-record Python (one GIL).

    python -m bench.hit_costs --model .bench/flipkart/model --data ../shared/data/flipkart-20k.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import event_bytes, load_products
from worker.artifact import load_manifest
from worker.engine import TagEngine
from worker.metrics import Metrics
from worker.offsets import OffsetTracker
from worker.outputs import BuildMessages
from worker.records import DecodeRecords, Parsed
from worker.review_queue import RouteReview
from worker.settings import EvidenceSettings, KafkaSettings, LimitSettings, ModelSettings, ReviewSettings
from worker.tagging import Explain, Tagged, _for_fields, fields_print, result_from_cache, tags_to_cache
from worker.transport import ConsumedRecord


def hit_costs(model_dir: Path, products: list[dict[str, str]], repeat: int = 5) -> dict[str, Any]:
    files = load_manifest(model_dir, verify=False).files
    engine = TagEngine(model_dir, precision=ModelSettings().serve_precision(files), trace_lexical=True)
    records = [ConsumedRecord("in", 0, i, k, v, 1) for i, (k, v) in enumerate(event_bytes(products, "hit"))]
    decode = DecodeRecords(LimitSettings(), Metrics())
    parsed = [p for p in decode(records, 0.0) if isinstance(p, Parsed)]
    explain = Explain(EvidenceSettings(), ReviewSettings().margin)
    entries: list[bytes] = []
    for i in range(0, len(parsed), 64):  # what the worker writes to the cache for these products
        chunk = parsed[i : i + 64]
        encoded = engine.encode([p.text for p in chunk])
        outputs = engine.run(encoded)
        entries += [
            tags_to_cache(t, near, fields_print(p.product.title, p.product.description))
            for p, (t, near) in zip(
                chunk, explain(engine, chunk, outputs, engine.decode(encoded, outputs)), strict=True
            )
        ]
    results = [result_from_cache(e) for e in entries]
    tagged = [Tagged(p, r, True) for p, r in zip(parsed, results, strict=True) if r is not None]
    assert len(tagged) == len(parsed)
    route = RouteReview(ReviewSettings(), "review", Metrics())
    build = BuildMessages(KafkaSettings(), engine, LimitSettings())

    def offsets() -> None:
        tracker = OffsetTracker()
        for r in records:
            tracker.seen(r.tp, r.offset)
        tracker.done(tracker.open((r.tp, r.offset) for r in records))

    steps: dict[str, Callable[[], object]] = {
        "decode (JSON, validation, model text, content hash)": lambda: decode(records, 0.0),
        "cache entry -> tags": lambda: [result_from_cache(e) for e in entries],
        "evidence check against the product's own fields": lambda: [_for_fields(t.result, t.record) for t in tagged],
        "review decision": lambda: route(tagged, engine.explain_basis, {}, 1.75e9, engine),
        "tag event bytes": lambda: build(list(tagged), 1.75e9),
        "offset tracking": offsets,
    }
    out: dict[str, float] = {}
    for name, step in steps.items():
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - started)
        out[name] = round(best / len(records) * 1e6, 2)
    return {
        "hits": len(records),
        "entry_bytes_mean": round(sum(map(len, entries)) / len(entries), 1),
        "us_per_hit": out,
        "us_per_hit_total": round(sum(out.values()), 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--items", type=int, default=512)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    products, _ = load_products(args.data, args.items)
    print(json.dumps(hit_costs(args.model, products, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
