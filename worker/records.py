"""Step 1, decoding: fetched records -> immutable `Valid` (with the real tokens the model will see)
or `Rejected` (a dead-letter reason). Every exception from decoding a record becomes a `Rejected`;
no record can stop the loop."""

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
class Valid:
    source: ConsumedRecord
    received: float  # monotonic time the poll returned it (queue-wait metric)
    product: ProductEvent
    text: str
    chash: str
    encoded: Encoded  # tokenized once, here: the batcher's budget and the engine see the same tokens

    @property
    def tokens(self) -> int:
        return len(self.encoded)


@dataclass(frozen=True)
class Rejected:
    source: ConsumedRecord
    received: float
    invalid: Invalid


Decoded = Valid | Rejected


def where(r: ConsumedRecord) -> str:
    return f"{r.topic}[{r.partition}]@{r.offset}"


class Tokenizer(Protocol):
    def encode(self, texts: Sequence[str]) -> list[Encoded]: ...


class DecodeRecords:
    """Bytes -> product -> model text -> tokens. Tokenizes a poll's texts in one call."""

    def __init__(self, limits: LimitSettings, tokenizer: Tokenizer, metrics: Metrics) -> None:
        self.limits, self.tokenizer, self.metrics = limits, tokenizer, metrics

    def __call__(self, records: Sequence[ConsumedRecord], received: float) -> list[Decoded]:
        with self.metrics.timed("decode"):
            products = [decode_product(r.value, self.limits) for r in records]
        texts = [model_text(p) for p in products if isinstance(p, ProductEvent)]
        with self.metrics.timed("tokenize"):
            encoded = self._encode(texts)
        out: list[Decoded] = []
        it = iter(encoded)
        for r, p in zip(records, products, strict=True):
            if isinstance(p, Invalid):
                out.append(Rejected(r, received, p))
                continue
            enc = next(it)
            if isinstance(enc, Invalid):
                out.append(Rejected(r, received, enc))
            else:
                out.append(Valid(r, received, p, enc.text, content_hash(enc.text), enc))
        return out

    def _encode(self, texts: list[str]) -> list[Encoded | Invalid]:
        if not texts:
            return []
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
