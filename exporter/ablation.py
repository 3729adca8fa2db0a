"""What each lexical component adds, on the test split of a `make quality` run.

`python -m exporter.ablation runs/quality/full/NAME` takes the run's trained parts (its lexical
channel with and without the slot regressions, its candidate-span extractor) and scores the test
items with the serving decisions, thresholds re-tuned on the run's own validation split for each
variant; the last row is the served model (encoder fused in) from the run's `report.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from exporter.metrics import binarize, report, tune_thresholds
from exporter.train import predict_tags
from schemas.training import load_rows
from worker.candidates import CandidateExtractor
from worker.contract import Decisions, RunMeta, compose_text
from worker.lexical import LexicalChannel


@dataclasses.dataclass(frozen=True)
class Row:
    micro_f1: float
    per_facet: dict[str, float]

    @classmethod
    def of(cls, result: dict[str, Any]) -> Row:
        return cls(float(result["micro"]["f1"]), {k: float(v["f1"]) for k, v in result["per_facet"].items()})


def variant(
    lexical: LexicalChannel,
    extractor: CandidateExtractor | None,
    decisions: Decisions,
    val: tuple[list[str], list[list[str]]],
    test: tuple[list[str], list[list[str]]],
) -> Row:
    labels = decisions.labels
    val_scores = lexical.scores(val[0])
    thresholds = tune_thresholds(val_scores, binarize(val[1], labels), labels, "per_facet")
    facets = extractor.facets if extractor is not None else []
    rules = decisions.model_copy(
        update={"thresholds": [float(t) for t in thresholds], "extract_facets": [], "candidate_facets": facets}
    )
    found = [extractor.extract(text) for text in test[0]] if extractor is not None else None
    _, pred = predict_tags(test[0], [[] for _ in test[0]], lexical.scores(test[0]), None, rules, found)
    return Row.of(report(test[1], pred))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m exporter.ablation", description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a dataset's directory of a `make quality` run (data/, run/, report.json)")
    args = p.parse_args(argv)
    run, data = args.run / "run", args.run / "data"
    meta = RunMeta.model_validate_json((run / "tagger.json").read_text())
    decisions = meta.decisions
    if not decisions.lexical:
        raise SystemExit(f"{run}: trained without the lexical channel")

    def texts_tags(path: Path) -> tuple[list[str], list[list[str]]]:
        rows = load_rows(path).rows
        return [compose_text(r.title, r.description) for r in rows], [list(r.tags) for r in rows]

    val, test = texts_tags(run / "val.jsonl"), texts_tags(data / "test.jsonl")
    full = LexicalChannel.load(run)
    extractor = CandidateExtractor.load(run) if (run / "candidates.json").is_file() else None
    rows: dict[str, Row] = {
        "neighbours + gazetteer": variant(dataclasses.replace(full, slots=None), None, decisions, val, test),
        "+ slot regressions": variant(full, None, decisions, val, test),
    }
    if extractor is not None:
        rows["+ candidate spans (lexical channel as trained)"] = variant(full, extractor, decisions, val, test)
    served = json.loads((args.run / "report.json").read_text())
    for name, key in (("served: + encoder, fused (fp32)", "ours"), ("TF-IDF + LR baseline", "baseline")):
        rows[name] = Row.of(served[key])
    facets = sorted({f for r in rows.values() for f in r.per_facet})
    print(f"{'variant':50} {'micro-F1':>9} " + " ".join(f"{f[:10]:>10}" for f in facets))
    for name, r in rows.items():
        print(f"{name:50} {r.micro_f1:>9.4f} " + " ".join(f"{r.per_facet.get(f, 0.0):>10.4f}" for f in facets))
    out = {name: dataclasses.asdict(r) for name, r in rows.items()}
    print(json.dumps({"run": str(args.run), "rows": out}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
