"""`tagger compare --live TOPIC --shadow TOPIC`: read both topics from the beginning, join tag events
by product id + content hash (the same input seen by both models), and print agreement figures:
per-facet Jaccard, tags added/removed per item, share of identical tag sets; then one JSON line."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from typing import Any

from schemas.events import TagEvent
from worker.shadow import agreement


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--live", required=True, help="topic of the live model's tag events (e.g. products.tags)")
    p.add_argument("--shadow", required=True, help="topic of the shadow model's tag events (products.tags.shadow)")
    p.add_argument("--bootstrap", default="localhost:9092", help="Kafka bootstrap servers")
    p.add_argument("--idle-s", type=float, default=3.0, help="stop reading a topic after this long without records")
    p.add_argument("--max-s", type=float, default=120.0, help="stop reading a topic after this long in any case")


def compare(live: Iterable[TagEvent], shadow: Iterable[TagEvent]) -> dict[str, Any]:
    """Agreement over the items both models tagged (latest event of each kind per product + content)."""
    live_by = {(e.product_id, e.content_hash): e for e in live}
    shadow_by = {(e.product_id, e.content_hash): e for e in shadow}
    joined = sorted(live_by.keys() & shadow_by.keys())
    facet_sum: dict[str, float] = {}
    facet_n: dict[str, int] = {}
    added = removed = identical = 0
    for k in joined:
        a = agreement((t.tag for t in live_by[k].tags), (t.tag for t in shadow_by[k].tags))
        for f, j in a.jaccard.items():
            facet_sum[f] = facet_sum.get(f, 0.0) + j
            facet_n[f] = facet_n.get(f, 0) + 1
        added, removed, identical = added + a.added, removed + a.removed, identical + a.identical
    n = len(joined)
    return {
        "items": n,
        "live_only": len(live_by) - n,
        "shadow_only": len(shadow_by) - n,
        "live_versions": sorted({live_by[k].model_version for k in joined}),
        "shadow_versions": sorted({shadow_by[k].model_version for k in joined}),
        "identical_share": round(identical / n, 4) if n else None,
        "added_per_item": round(added / n, 4) if n else None,
        "removed_per_item": round(removed / n, 4) if n else None,
        "jaccard_by_facet": {f: round(facet_sum[f] / facet_n[f], 4) for f in sorted(facet_sum)},
    }


def topic_reader(bootstrap: str, topic: str, **config: Any) -> Any:
    """A kafka-python consumer of `topic` from its beginning, in no group (it never commits)."""
    from kafka import KafkaConsumer

    never_commits = {"group_id": None, "enable_auto_commit": False}
    return KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **never_commits, **config)


def read_topic(bootstrap: str, topic: str, idle_s: float, max_s: float) -> list[TagEvent]:
    return [TagEvent.model_validate_json(v) for v in read_values(bootstrap, topic, idle_s, max_s)]


def read_values(bootstrap: str, topic: str, idle_s: float, max_s: float) -> list[bytes]:
    """Every record value of `topic` from the beginning (no group), until `idle_s` without records
    (Tansu's end offsets are unreliable, so the end is where records stop) or `max_s`."""
    consumer = topic_reader(bootstrap, topic)
    out: list[bytes] = []
    started = last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s and time.monotonic() - started < max_s:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(m.value for m in batch if m.value is not None)
                last = time.monotonic()
    finally:
        consumer.close()
    return out


def report(figures: dict[str, Any]) -> str:
    lines = [
        f"items compared: {figures['items']} (live only {figures['live_only']}, shadow only {figures['shadow_only']})",
        f"live {', '.join(figures['live_versions'])} vs shadow {', '.join(figures['shadow_versions'])}",
        f"identical tag sets: {figures['identical_share']}",
        f"tags added per item: {figures['added_per_item']}, removed per item: {figures['removed_per_item']}",
    ]
    lines += [f"  jaccard {facet}: {j}" for facet, j in figures["jaccard_by_facet"].items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    live = read_topic(args.bootstrap, args.live, args.idle_s, args.max_s)
    shadow = read_topic(args.bootstrap, args.shadow, args.idle_s, args.max_s)
    figures = compare(live, shadow)
    print(report(figures))
    print(json.dumps(figures, sort_keys=True))
    return 0 if figures["items"] else 1
