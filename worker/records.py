"""Step 1, decoding: fetched records -> immutable `Parsed` (product, model text, content hash) or
`Rejected` (a dead-letter reason); then, for cache misses only, `Tokenize` -> `Valid` (with the
real tokens the model will see). Every exception from decoding a record becomes a `Rejected`; no
record can stop the loop."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from schemas.events import ProductEvent
from worker.decode import Invalid, content_hash, decode_product, model_text
from worker.engine import Encoded
from worker.metrics import Metrics
from worker.settings import LimitSettings
from worker.transport import ConsumedRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parsed:
    source: ConsumedRecord
    received: float  # monotonic time the poll returned it (queue-wait metric)
    product: ProductEvent
    text: str
    chash: str


@dataclass(frozen=True)
class Valid(Parsed):
    encoded: Encoded  # tokenized once, here: the batcher's budget and the engine see the same tokens

    @property
    def tokens(self) -> int:
        return len(self.encoded)


@dataclass(frozen=True)
class Rejected:
    source: ConsumedRecord
    received: float
    invalid: Invalid


Decoded = Parsed | Rejected


def where(r: ConsumedRecord) -> str:
    return f"{r.topic}[{r.partition}]@{r.offset}"


class Tokenizer(Protocol):
    def encode(self, texts: Sequence[str]) -> list[Encoded]: ...


class DecodeRecords:
    """Bytes -> product -> model text and content hash."""

    def __init__(self, limits: LimitSettings, metrics: Metrics) -> None:
        self.limits, self.metrics = limits, metrics

    def __call__(self, records: Sequence[ConsumedRecord], received: float) -> list[Decoded]:
        out: list[Decoded] = []
        with self.metrics.timed("decode"):
            for r in records:
                p = decode_product(r.value, self.limits)
                if isinstance(p, Invalid):
                    out.append(Rejected(r, received, p))
                else:
                    text = model_text(p)
                    out.append(Parsed(r, received, p, text, content_hash(text)))
        return out


class Tokenize:
    """Parsed -> Valid with the engine's own tokens, one call for many texts."""

    def __init__(self, tokenizer: Tokenizer, metrics: Metrics) -> None:
        self.tokenizer, self.metrics = tokenizer, metrics

    def __call__(self, items: Sequence[Parsed]) -> list[Valid | Rejected]:
        if not items:
            return []
        with self.metrics.timed("tokenize"):
            encoded = self._encode([p.text for p in items])
        return [
            Rejected(p.source, p.received, e)
            if isinstance(e, Invalid)
            else Valid(p.source, p.received, p.product, p.text, p.chash, e)
            for p, e in zip(items, encoded, strict=True)
        ]

    def _encode(self, texts: list[str]) -> list[Encoded | Invalid]:
        try:
            return list(self.tokenizer.encode(texts))
        except Exception:  # one text broke the tokenizer: find it, keep the others
            log.warning("tokenizing %d texts failed; tokenizing one at a time", len(texts))
        out: list[Encoded | Invalid] = []
        for t in texts:
            try:
                out.append(self.tokenizer.encode([t])[0])
            except Exception as exc:
                out.append(Invalid("inference_failed", f"tokenizer: {type(exc).__name__}: {str(exc)[:500]}"))
        return out
