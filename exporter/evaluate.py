"""`tagger evaluate`: P/R/F1 of a model artifact, beside a TF-IDF baseline trained on the same data."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from exporter.metrics import report
from schemas.training import TrainingRow, load_rows
from worker.contract import compose_text
from worker.engine import TagEngine


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="model directory from `tagger export`")
    p.add_argument("--data", required=True, type=Path, help="labelled JSONL to evaluate on")
    p.add_argument("--baseline-train", type=Path, help="also train and score a TF-IDF baseline on this file")
    p.add_argument("--int8", action="store_true", help="evaluate model.int8.onnx")
    p.add_argument("--both", action="store_true", help="evaluate fp32 and int8 side by side")
    p.add_argument("--output", type=Path, help="also write the JSON report here")


def evaluate_model(
    model_dir: Path, rows: Sequence[TrainingRow], int8: bool = False, extract: bool = True
) -> dict[str, object]:
    engine = TagEngine(model_dir, int8=int8, extract=extract)
    started = time.monotonic()
    tags = engine.tag_texts([compose_text(r.title, r.description) for r in rows])
    result = report([r.tags for r in rows], [[t.tag for t in ts] for ts in tags])
    result["items_per_s"] = round(len(rows) / (time.monotonic() - started), 1)
    result["model_version"] = engine.model_version
    result["extract_facets"] = engine.extract_facets
    return result


def run(args: argparse.Namespace) -> int:
    rows = load_rows(args.data).rows
    out: dict[str, object] = {}
    variants = [False, True] if args.both else [args.int8]
    for int8 in variants:
        name = "model_int8" if int8 else "model"
        result = out[name] = evaluate_model(args.model, rows, int8)
        if result["extract_facets"]:  # the same model with its extractive head switched off
            out[f"{name}_classifier_only"] = evaluate_model(args.model, rows, int8, extract=False)
    if args.baseline_train:
        from exporter.baseline import TfidfBaseline

        started = time.monotonic()
        baseline = TfidfBaseline().fit(load_rows(args.baseline_train).rows)
        pred = baseline.predict([compose_text(r.title, r.description) for r in rows])
        out["tfidf_baseline"] = report([r.tags for r in rows], pred) | {
            "fit_seconds": round(time.monotonic() - started, 1),
            "threshold_strategy": baseline.strategy,
        }
    text = json.dumps(out, indent=2, ensure_ascii=False)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0
