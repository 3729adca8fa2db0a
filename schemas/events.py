"""Event contracts shared by catalog producers, the worker and tag subscribers (JSON on the wire).

JSON Schemas of these models live in `schemas/json/` (regenerate with `python -m schemas.events`;
a test keeps them in sync).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.training import MAX_DESCRIPTION_CHARS, MAX_TITLE_CHARS

MAX_PRODUCT_ID_CHARS = 256

DeadLetterReason = Literal[
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "schema",
    "empty_title",
    "oversized_field",
    "inference_failed",
    # feedback records (`products.tag-feedback`) only:
    "bad_tag",  # the tag is not `facet:value`
    "unknown_product",  # no tag event was ever published for this product id by this system
]
TagSource = Literal["model", "human"]
FeedbackAction = Literal["accept", "reject", "add"]
MAX_TAG_CHARS = 512


class ProductEvent(BaseModel):
    """A new or changed product, published by catalog ingestion to `products.new`.
    Extra fields are allowed and ignored; text sizes are bounded."""

    model_config = ConfigDict(extra="allow", frozen=True, json_schema_extra={"additionalProperties": True})

    product_id: str = Field(min_length=1, max_length=MAX_PRODUCT_ID_CHARS, description="Catalog product id.")
    title: str = Field(max_length=MAX_TITLE_CHARS, description="Product title; must not be blank.")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS, description="Optional description.")


class Evidence(BaseModel):
    """Where a tag comes from in the product's own text: `text == product[field][start:end]` (Python
    string indices, i.e. code points, into the ORIGINAL title or description of the product event)."""

    model_config = ConfigDict(frozen=True)

    field: Literal["title", "description"]
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    text: str


class TagScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    tag: str = Field(description="`facet:value`, e.g. `category:Clothing` or `brand:Alisha`.")
    score: float = Field(ge=0.0, le=1.0, description="Model probability (only tags over threshold are sent).")
    # Added by issue 13; optional both ways (old events parse, old consumers ignore them).
    evidence: list[Evidence] | None = Field(
        None,
        description="Spans of the title/description behind the tag (the extracted value, or the words that drove "
        "a classified tag most); absent when not computed.",
    )
    source: TagSource | None = Field(
        None, description="`human`: set by a reviewer's correction (score 1.0); absent or `model`: the model's tag."
    )


class TagEvent(BaseModel):
    """Tags of one product, published to `products.tags` keyed by product id."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    event_id: str = Field(description="Deterministic: same product id, content and model version -> same id.")
    product_id: str
    tags: list[TagScore] = Field(description="Tags over their thresholds, highest score first.")
    model_version: str = Field(description="Version (content hash) of the model artifact that tagged it.")
    taxonomy_version: str | None = Field(
        None,
        description="Taxonomy release of the model's labels (`tagger train --taxonomy-version`, default a hash "
        "of the label set). Optional: absent in events of workers older than this field.",
    )
    content_hash: str = Field(description="Hash of the model input text (title + description).")
    tagged_at: datetime = Field(description="When this event was produced (UTC).")
    cached: bool = Field(description="True when the tags came from the Redis cache.")
    source_topic: str
    source_partition: int
    source_offset: int


class DeadLetter(BaseModel):
    """A product event that could not be tagged, published to `products.dlq`; its offset is committed."""

    model_config = ConfigDict(frozen=True)

    error_kind: DeadLetterReason
    error_message: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = Field(None, description="Kafka timestamp of the original record.")
    key_b64: str | None = Field(None, description="Original key bytes, base64 (a prefix when `key_truncated`).")
    value_b64: str = Field(
        description="Original value bytes, base64: exactly what was received, or a prefix when `truncated`."
    )
    value_size: int = Field(description="Size of the original value in bytes (before any truncation).")
    dead_lettered_at: datetime
    # Added later, optional so that older dead letters still parse: a dead letter must always be
    # publishable, so it carries at most a bounded prefix of a huge original.
    truncated: bool = Field(False, description="True when `value_b64` holds only a prefix of the original value.")
    value_sha256: str | None = Field(None, description="sha256 (hex) of the whole original value.")
    key_size: int | None = Field(None, description="Size of the original key in bytes (None: no key).")
    key_truncated: bool = Field(False, description="True when `key_b64` holds only a prefix of the original key.")


class TagFeedback(BaseModel):
    """A reviewer's decision on one tag of one product, on `products.tag-feedback` keyed by product id.
    The worker keeps it as an override in Redis: every later tag event of the product applies it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    product_id: str = Field(min_length=1, max_length=MAX_PRODUCT_ID_CHARS)
    action: FeedbackAction = Field(description="accept (keep, marked human), reject (never again), add (always).")
    tag: str = Field(min_length=3, max_length=MAX_TAG_CHARS, description="`facet:value`.")
    reviewer: str = Field(min_length=1, max_length=256, description="Who decided (a user name or id).")
    at: datetime = Field(description="When the decision was made (UTC).")
    feedback_id: str | None = Field(None, max_length=256, description="Optional id of the decision (idempotency).")
    note: str | None = Field(None, max_length=2000)


ReviewReasonKind = Literal["near_threshold", "empty_facet"]


class ReviewReason(BaseModel):
    """Why an item was routed to review."""

    model_config = ConfigDict(frozen=True)

    kind: ReviewReasonKind = Field(
        description="near_threshold: a tag's score is within the margin of its threshold; empty_facet: a "
        "single-valued facet that usually has a tag has none."
    )
    facet: str
    tag: str | None = None
    score: float | None = None
    threshold: float | None = None


class ReviewItem(TagEvent):
    """An uncertain item, published to `products.review` keyed by product id (besides its tag event):
    the tag event's fields plus the text (to show the evidence), the reasons and the near-miss tags."""

    title: str
    description: str | None = None
    reasons: list[ReviewReason]
    candidates: list[TagScore] = Field(
        default_factory=list,
        description="Tags just below their thresholds (within the margin): a reviewer can add them.",
    )


SCHEMAS: dict[str, type[BaseModel]] = {
    "product_event": ProductEvent,
    "tag_event": TagEvent,
    "dead_letter": DeadLetter,
    "tag_feedback": TagFeedback,
    "review_item": ReviewItem,
}
SCHEMA_DIR = Path(__file__).parent / "json"


def render_schemas() -> dict[str, str]:
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2) + "\n" for name, model in SCHEMAS.items()
    }


if __name__ == "__main__":
    SCHEMA_DIR.mkdir(exist_ok=True)
    for fname, text in render_schemas().items():
        (SCHEMA_DIR / fname).write_text(text)
        print("wrote", SCHEMA_DIR / fname)
