"""Deterministic splits, so numbers are comparable run to run.

By default items are split by a hash of their *normalised title*, so listings that repeat a title
(catalogs are full of them: 44% of Flipkart's test titles appear verbatim in its training part
under an id split) all land on the same side, and test numbers measure generalisation, not
memorisation. `--group id` gives the old split by id hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from schemas.training import TrainingRow, load_rows

log = logging.getLogger(__name__)


def bucket_of(item_id: str, salt: str = "") -> int:
    return int(hashlib.sha1((salt + item_id).encode()).hexdigest(), 16) % 100


_NOT_WORD = re.compile(r"[\W_]+")
GROUPS = ("title", "id")


def title_key(title: str) -> str:
    """Near-identical titles share a key: Unicode-normalised (NFKC), case-folded, punctuation and
    spacing ignored ("Alisha Solid Women's Shorts" == "alisha solid women s shorts!")."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", title).casefold()).split())


def group_of(row: TrainingRow, group: str) -> str:
    if group == "title":
        return title_key(row.title) or row.id
    if group == "id":
        return row.id
    raise ValueError(f"unknown split group {group!r}; choose one of {GROUPS}")


def split(
    rows: Sequence[TrainingRow], percent: int, salt: str = "", group: str = "title"
) -> tuple[list[TrainingRow], list[TrainingRow]]:
    """(rest, held_out): an item is held out when sha1(salt + its group) % 100 < percent, so a
    group (by default: one normalised title) never straddles the two parts."""
    rest: list[TrainingRow] = []
    held: list[TrainingRow] = []
    for r in rows:
        (held if bucket_of(group_of(r, group), salt) < percent else rest).append(r)
    return rest, held


def write_rows(path: Path, rows: Sequence[TrainingRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r.model_dump(exclude_none=True), ensure_ascii=False) + "\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="labelled JSONL file")
    p.add_argument("--out", required=True, type=Path, help="directory for train.jsonl and test.jsonl")
    p.add_argument("--test-percent", type=int, default=20, help="held-out share by group hash (default 20)")
    p.add_argument(
        "--group",
        choices=GROUPS,
        default="title",
        help="what never straddles train and test: 'title' (normalised title, default) or 'id'",
    )


def run(args: argparse.Namespace) -> int:
    loaded = load_rows(args.data)
    train, test = split(loaded.rows, args.test_percent, group=args.group)
    write_rows(args.out / "train.jsonl", train)
    write_rows(args.out / "test.jsonl", test)
    seen = {title_key(r.title) for r in train}
    overlap = sum(title_key(r.title) in seen for r in test)
    print(
        json.dumps(
            {
                "train": len(train),
                "test": len(test),
                "group": args.group,
                "test_titles_in_train": round(overlap / len(test), 4) if test else 0.0,
                "bad_rows": len(loaded.errors),
            }
        )
    )
    return 0
