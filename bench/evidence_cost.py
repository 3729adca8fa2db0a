"""What evidence costs on the worker's cold path: the batch thread's tagging step (`TagBatch`: the
engine's inference and decisions, then `Explain`), with evidence on and off, same texts, same
micro-batches, in-process (no Kafka, no Redis: the batch thread is ~98% inference on CPU, so this is
the share of worker throughput evidence takes). Rounds alternate off/on so load drifts hit both.

    python -m bench.evidence_cost --model runs/flipkart/model --data ../shared/data/flipkart-20k.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from bench.harness import load_products
from worker.cache import NoCache
from worker.contract import compose_text
from worker.decode import content_hash
from worker.engine import TagEngine
from worker.metrics import Metrics
from worker.records import Rejected, Valid
from worker.settings import EvidenceSettings, ModelSettings
from worker.tagging import Explain, TagBatch
from worker.transport import ConsumedRecord

log = logging.getLogger("bench")


def _items(engine: TagEngine, products: list[dict[str, str]]) -> list[Valid]:
    from schemas.events import ProductEvent

    out = []
    for i, p in enumerate(products):
        event = ProductEvent(product_id=f"p-{i}", title=p["title"], description=p.get("description"))
        text = compose_text(event.title, event.description)
        (encoded,) = engine.encode([text])
        out.append(Valid(ConsumedRecord("in", 0, i, None, None, None), 0.0, event, text, content_hash(text), encoded))
    return out


def evidence_cost(
    model_dir: Path, products: list[dict[str, str]], max_items: int, max_tokens: int, rounds: int = 3
) -> dict[str, Any]:
    from worker.artifact import load_manifest

    files = load_manifest(model_dir, verify=False).files
    precision = ModelSettings.model_validate({}).serve_precision(files)
    steps: dict[str, TagBatch] = {}
    engines: dict[str, TagEngine] = {}
    for name, on in (("off", False), ("on", True)):
        engine = engines[name] = TagEngine(
            model_dir, precision=precision, max_items=max_items, max_tokens=max_tokens, trace_lexical=on
        )
        explain = Explain(EvidenceSettings(enabled=on), margin=0.1 if on else 0.0)
        steps[name] = TagBatch(engine, NoCache(), "bench:", Metrics(), explain if on else None)
    items = _items(engines["off"], products)
    chunks = [items[i : i + max_items] for i in range(0, len(items), max_items)]
    wall = {"off": 0.0, "on": 0.0}
    cpu = {"off": 0.0, "on": 0.0}  # process CPU (ONNX Runtime's threads included): steadier under load
    for step in steps.values():
        step(chunks[0])  # warm-up
    with_evidence = 0
    for _ in range(rounds):
        for c in chunks:  # off and on alternate per micro-batch, so load drifts hit both alike
            for name, step in steps.items():
                t, c0 = time.perf_counter(), time.process_time()
                out = step(c)
                wall[name] += time.perf_counter() - t
                cpu[name] += time.process_time() - c0
                if name == "on":
                    with_evidence += sum(
                        1 for o in out if not isinstance(o, Rejected) and any(x.evidence for x in o.tags)
                    )
    n = len(items) * rounds
    eps = {k: n / v for k, v in wall.items()}
    result = {
        "items": len(items),
        "rounds": rounds,
        "precision": precision,
        "eps_evidence_off": eps["off"],
        "eps_evidence_on": eps["on"],
        "cost_share": 1 - eps["on"] / eps["off"],
        "cpu_ms_per_item_off": 1000 * cpu["off"] / n,
        "cpu_ms_per_item_on": 1000 * cpu["on"] / n,
        "cpu_cost_share": 1 - cpu["off"] / cpu["on"],
        "items_with_evidence_share": with_evidence / n,
    }
    log.info(
        "evidence: %.1f items/s off, %.1f on (cost %.1f%% of throughput, %.1f%% of CPU)",
        eps["off"],
        eps["on"],
        100 * result["cost_share"],
        100 * result["cpu_cost_share"],
    )
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--items", type=int, default=640)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-items", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=8192)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    products, _ = load_products(args.data, args.items)
    print(json.dumps(evidence_cost(args.model, products, args.max_items, args.max_tokens, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
