"""Training / evaluation rows: JSON lines ``{"id", "title", "description"?, "tags": ["facet:value", ...]}``.

A bad row is reported with its line number and skipped; the caller gets every error back and a
summary is logged, so nothing is dropped silently and nothing is fatal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 2_000
MAX_DESCRIPTION_CHARS = 20_000
MAX_TAGS = 200


class TrainingRow(BaseModel):
    """One labelled product. Extra fields are ignored so richer exports still load."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=200, description="Stable product id (used for the split).")
    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS, description="Product title.")
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS, description="`facet:value` tags.")

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("title is blank")
        return v

    @field_validator("tags")
    @classmethod
    def _tags_are_facet_value(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            facet, sep, value = tag.partition(":")
            if not sep or not facet.strip() or not value.strip():
                raise ValueError(f"tag {tag!r} is not 'facet:value'")
        # Keep order, drop exact duplicates.
        return list(dict.fromkeys(tags))


def facet_of(tag: str) -> str:
    """`category:Clothing > Women` -> `category`."""
    return tag.partition(":")[0]


@dataclass(frozen=True)
class RowError:
    """A row that could not be used, with where it was and why."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class LoadResult:
    rows: list[TrainingRow]
    errors: list[RowError]

    @property
    def summary(self) -> str:
        return f"{len(self.rows)} rows loaded, {len(self.errors)} bad rows skipped"


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        yield from enumerate(fh, start=1)


def parse_row(raw: bytes) -> TrainingRow:
    """Parse one JSON line; raises ValueError with a readable message."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8 at byte {exc.start}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    try:
        return TrainingRow.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'row'}: {err['msg']}" for err in exc.errors())
        raise ValueError(problems) from None


def load_rows(path: str | Path, *, max_errors_logged: int = 20) -> LoadResult:
    """Load every valid row of a JSONL file; bad rows are collected as `RowError`s and skipped."""
    path = Path(path)
    rows: list[TrainingRow] = []
    errors: list[RowError] = []
    for lineno, raw in _iter_lines(path):
        if not raw.strip():
            continue
        try:
            rows.append(parse_row(raw))
        except ValueError as exc:
            err = RowError(str(path), lineno, str(exc))
            errors.append(err)
            if len(errors) <= max_errors_logged:
                log.warning("skipping bad row %s", err)
    result = LoadResult(rows, errors)
    log.info("%s: %s", path, result.summary)
    return result
