"""Deterministic splits by id hash, so numbers are comparable run to run."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from schemas.training import TrainingRow, load_rows

log = logging.getLogger(__name__)


def bucket_of(item_id: str, salt: str = "") -> int:
    return int(hashlib.sha1((salt + item_id).encode()).hexdigest(), 16) % 100


def split(rows: Sequence[TrainingRow], percent: int, salt: str = "") -> tuple[list[TrainingRow], list[TrainingRow]]:
    """(rest, held_out): an item is held out when sha1(salt + id) % 100 < percent."""
    rest: list[TrainingRow] = []
    held: list[TrainingRow] = []
    for r in rows:
        (held if bucket_of(r.id, salt) < percent else rest).append(r)
    return rest, held


def write_rows(path: Path, rows: Sequence[TrainingRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r.model_dump(exclude_none=True), ensure_ascii=False) + "\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="labelled JSONL file")
    p.add_argument("--out", required=True, type=Path, help="directory for train.jsonl and test.jsonl")
    p.add_argument("--test-percent", type=int, default=20, help="held-out share by id hash (default 20)")


def run(args: argparse.Namespace) -> int:
    loaded = load_rows(args.data)
    train, test = split(loaded.rows, args.test_percent)
    write_rows(args.out / "train.jsonl", train)
    write_rows(args.out / "test.jsonl", test)
    print(json.dumps({"train": len(train), "test": len(test), "bad_rows": len(loaded.errors)}))
    return 0
