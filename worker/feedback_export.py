"""`tagger feedback export`: reviewers' decisions back into training data.

Reads the feedback topic (and the review topic, for the text of items outside `--base`) to their
end and writes training rows (`schemas/training.py`): for a product in `--base`, its labels with the
decisions applied (rejected tags removed, accepted and added tags present); for a product only seen
on the review topic, the tags the reviewer was shown, with the decisions applied. Every other base
row is copied unchanged, so the output is a complete training file for `tagger train --data`.
The last decision on a (product, tag) wins (feedback is keyed by product id: in order per product).
A product with decisions but no text anywhere is skipped and counted.

    tagger feedback export --topic products.tag-feedback --bootstrap HOST:9092 --out rows.jsonl \\
        [--base train.jsonl] [--review-topic products.review]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from schemas.events import ReviewItem, TagFeedback
from schemas.training import TrainingRow, load_rows
from worker.decode import Invalid
from worker.feedback import decode_feedback
from worker.settings import LimitSettings

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    e = sub.add_parser("export", help="write training rows with reviewers' decisions applied")
    e.add_argument("--topic", default="products.tag-feedback", help="feedback topic (TagFeedback records)")
    e.add_argument("--review-topic", default="products.review", help="review topic: text of items not in --base")
    e.add_argument("--bootstrap", default="localhost:9092", help="Kafka bootstrap servers")
    e.add_argument("--out", required=True, type=Path, help="training rows to write (JSON lines)")
    e.add_argument("--base", type=Path, help="training rows whose labels the decisions override")
    e.add_argument("--idle-s", type=float, default=3.0, help="a topic is read to its end after this long idle")
    e.add_argument("--max-s", type=float, default=300.0, help="stop reading a topic after this long in any case")


@dataclass
class ExportStats:
    decisions: int = 0
    bad_records: int = 0
    products: int = 0
    changed_base_rows: int = 0
    new_rows: int = 0
    without_text: list[str] = field(default_factory=list)


def latest_decisions(feedback: Iterable[TagFeedback]) -> dict[str, dict[str, str]]:
    """product id -> tag -> last action."""
    out: dict[str, dict[str, str]] = {}
    for fb in feedback:
        out.setdefault(fb.product_id, {})[fb.tag] = fb.action
    return out


def apply_decisions(tags: Iterable[str], decided: dict[str, str]) -> list[str]:
    """Rejected tags removed, accepted and added tags present (model order kept, new tags after)."""
    kept = [t for t in tags if decided.get(t) != "reject"]
    return list(dict.fromkeys(kept + sorted(t for t, a in decided.items() if a in ("accept", "add"))))


def merge(
    base: list[TrainingRow], reviewed: dict[str, ReviewItem], feedback: list[TagFeedback]
) -> tuple[list[TrainingRow], ExportStats]:
    """Pure: the rows to write and what happened."""
    decisions = latest_decisions(feedback)
    stats = ExportStats(decisions=len(feedback), products=len(decisions))
    rows: list[TrainingRow] = []
    seen: set[str] = set()
    for row in base:
        seen.add(row.id)
        decided = decisions.get(row.id)
        if decided is None:
            rows.append(row)
            continue
        rows.append(row.model_copy(update={"tags": apply_decisions(row.tags, decided)}))
        stats.changed_base_rows += 1
    for pid, decided in decisions.items():
        if pid in seen:
            continue
        item = reviewed.get(pid)
        if item is None:
            stats.without_text.append(pid)
            continue
        tags = apply_decisions([t.tag for t in item.tags], decided)
        try:
            rows.append(TrainingRow(id=pid, title=item.title, description=item.description, tags=tags))
        except ValidationError as exc:  # e.g. an id longer than training rows allow
            log.warning("product %.80s: no training row: %s", pid, exc.errors()[0]["msg"])
            stats.without_text.append(pid)
            continue
        stats.new_rows += 1
    return rows, stats


def parse_feedback(values: Iterable[bytes], stats: ExportStats | None = None) -> list[TagFeedback]:
    out = []
    limits = LimitSettings()
    for v in values:
        fb = decode_feedback(v, limits)
        if isinstance(fb, Invalid):
            if stats is not None:
                stats.bad_records += 1
            continue
        out.append(fb)
    return out


def parse_review_items(values: Iterable[bytes]) -> dict[str, ReviewItem]:
    """The latest review item per product (the one a reviewer most likely saw)."""
    out: dict[str, ReviewItem] = {}
    for v in values:
        try:
            item = ReviewItem.model_validate_json(v)
        except ValidationError:
            continue
        out[item.product_id] = item
    return out


def run(args: argparse.Namespace) -> int:
    from worker.compare import read_values

    base = load_rows(args.base).rows if args.base else []
    stats = ExportStats()
    feedback = parse_feedback(read_values(args.bootstrap, args.topic, args.idle_s, args.max_s), stats)
    reviewed = parse_review_items(read_values(args.bootstrap, args.review_topic, args.idle_s, args.max_s))
    rows, merged = merge(base, reviewed, feedback)
    merged.bad_records = stats.bad_records
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with tmp.open("w") as fh:
        for row in rows:
            fh.write(row.model_dump_json(exclude_none=True) + "\n")
    tmp.replace(args.out)
    summary = {
        "rows": len(rows),
        "decisions": merged.decisions,
        "bad_records": merged.bad_records,
        "products": merged.products,
        "changed_base_rows": merged.changed_base_rows,
        "new_rows": merged.new_rows,
        "without_text": len(merged.without_text),
    }
    if merged.without_text:
        log.warning(
            "%d products have decisions but no text (not in --base, no review item): e.g. %s",
            len(merged.without_text),
            ", ".join(merged.without_text[:5]),
        )
    print(json.dumps(summary, sort_keys=True))
    return 0
