"""`tagger predict`: offline backfill of a JSONL file with the worker's own engine (no torch)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from schemas.training import TrainingRow, load_rows
from worker.artifact import load_manifest
from worker.contract import compose_text
from worker.engine import Tag, TagEngine


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="model directory from `tagger export`")
    p.add_argument("--input", required=True, type=Path, help="JSONL with id, title, description?")
    p.add_argument("--output", required=True, type=Path, help="JSONL of {id, tags: [{tag, score}]}")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument(
        "--int8", dest="int8", action="store_true", default=None, help="use model.int8.onnx (default on CPU if present)"
    )
    precision.add_argument("--fp32", dest="int8", action="store_false", help="use model.onnx")
    p.add_argument("--batch-size", type=int, default=256, help="items tokenized and scored together")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="ONNX Runtime provider")


def predict_rows(engine: TagEngine, rows: list[TrainingRow], batch_size: int) -> Iterator[tuple[str, list[Tag]]]:
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        tags = engine.tag_texts([compose_text(r.title, r.description) for r in chunk])
        yield from zip((r.id for r in chunk), tags, strict=True)


def run(args: argparse.Namespace) -> int:
    # Same rule as the worker (ModelSettings.serve_int8): int8 on CPU when the artifact has it.
    int8 = args.int8
    if int8 is None:
        int8 = args.provider == "cpu" and "model.int8.onnx" in load_manifest(args.model, verify=False).files
    engine = TagEngine(args.model, provider=args.provider, int8=int8)
    # Rows without tags are fine here: the same loader validates ids and titles.
    loaded = load_rows(args.input)
    if loaded.errors:
        print(f"{args.input}: {loaded.summary}; first: {loaded.errors[0]}", file=sys.stderr)
    started, done = time.monotonic(), 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w") as out:
        for item_id, tags in predict_rows(engine, loaded.rows, args.batch_size):
            out.write(
                json.dumps(
                    {"id": item_id, "tags": [{"tag": t.tag, "score": t.score} for t in tags]}, ensure_ascii=False
                )
                + "\n"
            )
            done += 1
            if done % args.batch_size == 0 or done == len(loaded.rows):
                rate = done / max(1e-9, time.monotonic() - started)
                print(f"\r{done}/{len(loaded.rows)} items, {rate:.0f} items/s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(
        json.dumps(
            {
                "items": done,
                "bad_rows": len(loaded.errors),
                "model_version": engine.model_version,
                "seconds": round(time.monotonic() - started, 2),
            }
        )
    )
    return 0
