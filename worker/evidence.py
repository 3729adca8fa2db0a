"""Evidence: which characters of a product's own title/description a tag came from, and the tags just
below their thresholds. Pure (numpy only, no I/O).

- **Value spans**: a tag whose value is named in the text (an extracted span; a known value the
  gazetteer matched) points at where it occurs (`spans.find_span`: case-insensitive, never inside a
  Latin word, anywhere in CJK).
- **Lexical spans** (classified tags; the model's neighbour channel, `worker/lexical.py`): a tag's
  neighbour score is the sum over the k neighbours n that carry it of w_n (similarity^power,
  normalised); the similarity is sim_n = sum_f x_f * nb_f over the query's features f, so feature f's
  share of the score is sum_n w_n * x_f * nb_f / sim_n. The shares add up exactly to the channel's
  score. The strongest features are mapped back to the original text: a word (bigram) feature to its
  token(s), a character n-gram to the word containing it (Latin script) or to the n-gram itself (CJK).
  A model without a lexical channel gives classified tags value spans only (often none).

Spans index the ORIGINAL field (Python string indices, i.e. code points): the features' normalisation
(NFKC + case folding) is applied character by character with a map back to the original index, so
`text == field[start:end]` always holds, for CJK and Latin alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from schemas.training import facet_of
from worker.contract import HIERARCHY_SEPARATOR
from worker.lexical import _IS_CJK, _TOKEN, LexicalChannel, normalise
from worker.spans import find_span

MAX_FEATURES = 12  # strongest lexical features mapped to text per tag
MAX_CANDIDATES = 5  # near-miss tags kept per item


@dataclass(frozen=True)
class EvidenceSpan:
    field: str  # "title" | "description"
    start: int
    end: int
    text: str


class FieldText:
    """One original field, normalised like the lexical features, with each normalised character's
    index in the original and the tokens of `worker.lexical`."""

    def __init__(self, name: str, text: str) -> None:
        self.name, self.text = name, text
        parts: list[str] = []
        src: list[int] = []
        for i, ch in enumerate(text):
            n = normalise(ch)
            parts.append(n)
            src.extend([i] * len(n))
        self.norm, self.src = "".join(parts), src
        self.tokens = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(self.norm)]
        self.by_token: dict[str, list[int]] = {}
        for k, (tok, _, _) in enumerate(self.tokens):
            self.by_token.setdefault(tok, []).append(k)

    def span(self, start: int, end: int) -> EvidenceSpan:
        """Normalised [start, end) -> the original characters they came from."""
        a, b = self.src[start], self.src[end - 1] + 1
        return EvidenceSpan(self.name, a, b, self.text[a:b])

    def feature_spans(self, feature: str) -> list[tuple[int, int]]:
        """Where a lexical feature (`w:tok`, `w:a b`, `c:gram`) occurs, in normalised indices."""
        kind, body = feature[:2], feature[2:]
        if kind == "w:":
            first, _, second = body.partition(" ")
            hits = self.by_token.get(first, [])
            if not second:
                return [self.tokens[k][1:] for k in hits]
            return [
                (self.tokens[k][1], self.tokens[k + 1][2])
                for k in hits
                if k + 1 < len(self.tokens) and self.tokens[k + 1][0] == second
            ]
        if _IS_CJK.search(body):
            return [(m.start(), m.start() + len(body)) for m in re.finditer(re.escape(body), self.norm)]
        return [(s, e) for tok, s, e in self.tokens if body in f" {tok} "]


def fields_of(title: str, description: str | None) -> list[FieldText]:
    out = [FieldText("title", title)]
    if description:
        out.append(FieldText("description", description))
    return out


def value_spans(tag: str, fields: Sequence[FieldText]) -> list[EvidenceSpan]:
    """Where the tag's value (the leaf of a `A > B` path) is named in the text."""
    value = tag.partition(":")[2].rpartition(HIERARCHY_SEPARATOR)[2]
    out = []
    for f in fields:
        hit = find_span(f.text, value)
        if hit is not None:
            out.append(EvidenceSpan(f.name, hit[0], hit[1], f.text[hit[0] : hit[1]]))
    return out


@dataclass(frozen=True)
class ExplainBasis:
    """What evidence and review need of a model, built once per engine."""

    labels: list[str]
    thresholds: np.ndarray  # [labels]
    single_slots: frozenset[str]
    lexical: LexicalChannel | None
    feature_names: list[str]  # lexical column -> feature string
    facet_share: dict[str, float]  # facet -> share of training items that carry it (lexical index)

    @classmethod
    def build(
        cls,
        labels: Sequence[str],
        thresholds: Sequence[float],
        single_slots: Sequence[str],
        lexical: LexicalChannel | None,
    ) -> ExplainBasis:
        names: list[str] = []
        share: dict[str, float] = {}
        if lexical is not None:
            vocab = lexical.index.featurizer.vocab
            names = sorted(vocab, key=vocab.__getitem__)
            index = lexical.index
            facet_ids = {f: i for i, f in enumerate(sorted({facet_of(x) for x in labels}))}
            label_facet = np.asarray([facet_ids[facet_of(x)] for x in labels], dtype=np.int64)
            items = np.repeat(np.arange(index.n_items), np.diff(index.label_indptr))
            pairs = np.unique(items * len(facet_ids) + label_facet[index.label_ids])
            counts = np.bincount(pairs % len(facet_ids), minlength=len(facet_ids))
            share = {f: float(counts[i]) / max(1, index.n_items) for f, i in facet_ids.items()}
        return cls(
            list(labels), np.asarray(thresholds, dtype=np.float64), frozenset(single_slots), lexical, names, share
        )

    def threshold(self, tag: str) -> float | None:
        j = self.label_index.get(tag)
        return None if j is None else float(self.thresholds[j])

    @cached_property
    def label_index(self) -> dict[str, int]:
        return {x: i for i, x in enumerate(self.labels)}

    def expected_facets(self, min_share: float) -> set[str]:
        """Single-valued top-level facets (a brand, a category's first level) that at least
        `min_share` of the training items carry: an item without one is worth a look."""
        return {
            f
            for f, s in self.facet_share.items()
            if s >= min_share and min_share < 1.0 and f"{f}#0" in self.single_slots
        }


TraceItem = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # lexical.Trace.item


def feature_shares(lexical: LexicalChannel, item: TraceItem, label: int) -> dict[int, float]:
    """Each query feature's share of `label`'s neighbour score (they add up to that score)."""
    cols, vals, top, sims, weights = item
    rows, index = lexical.index.item_rows, lexical.index
    out: dict[int, float] = {}
    for n, sim, w in zip(top.tolist(), sims.tolist(), weights.tolist(), strict=True):
        if w <= 0 or sim <= 0:
            continue
        if label not in index.label_ids[index.label_indptr[n] : index.label_indptr[n + 1]]:
            continue
        s, e = rows.indptr[n], rows.indptr[n + 1]
        common, qi, ni = np.intersect1d(cols, rows.indices[s:e], assume_unique=True, return_indices=True)
        contrib = (w / sim) * vals[qi] * rows.data[s:e][ni]
        for c, v in zip(common.tolist(), contrib.tolist(), strict=True):
            out[c] = out.get(c, 0.0) + v
    return out


def lexical_spans(
    basis: ExplainBasis, item: TraceItem, label: int, fields: Sequence[FieldText]
) -> list[tuple[EvidenceSpan, float]]:
    """The text behind a label's lexical score: spans with the summed share of their features."""
    if basis.lexical is None:
        return []
    shares = feature_shares(basis.lexical, item, label)
    strongest = sorted(shares.items(), key=lambda kv: -kv[1])[:MAX_FEATURES]
    found: dict[EvidenceSpan, float] = {}
    for col, share in strongest:
        if share <= 0:
            break
        for f in fields:
            for s, e in f.feature_spans(basis.feature_names[col]):
                span = f.span(s, e)
                found[span] = found.get(span, 0.0) + share
    return sorted(found.items(), key=lambda kv: -kv[1])


def _overlaps(a: EvidenceSpan, b: EvidenceSpan) -> bool:
    return a.field == b.field and a.start < b.end and b.start < a.end


def tag_evidence(
    tag: str,
    fields: Sequence[FieldText],
    basis: ExplainBasis | None,
    item: TraceItem | None,
    max_spans: int,
) -> tuple[EvidenceSpan, ...]:
    """Value spans first, then the strongest lexical spans; spans never overlap; at most `max_spans`."""
    ranked = value_spans(tag, fields)
    if basis is not None and item is not None and (j := basis.label_index.get(tag)) is not None:
        ranked += [span for span, _ in lexical_spans(basis, item, j, fields)]
    kept: list[EvidenceSpan] = []
    for span in ranked:
        if len(kept) >= max_spans:
            break
        if span.text.strip() and not any(_overlaps(span, k) for k in kept):
            kept.append(span)
    return tuple(kept)


def near_misses(
    basis: ExplainBasis, row: np.ndarray, served: set[str], margin: float, limit: int = MAX_CANDIDATES
) -> list[tuple[str, float]]:
    """Labels scoring within `margin` below their thresholds (not served), highest first."""
    if margin <= 0:
        return []
    t = basis.thresholds
    idx = np.nonzero((row < t) & (row >= t - margin))[0]
    cands = [(basis.labels[j], float(row[j])) for j in idx if basis.labels[j] not in served]
    return sorted(cands, key=lambda c: -c[1])[:limit]


def rebase(spans: Sequence[EvidenceSpan], title: str, description: str | None) -> tuple[EvidenceSpan, ...]:
    """Spans computed for one product's text, checked against (and moved to) another's with the same
    model text (cache hits: whitespace may differ). A span whose text is not found is dropped."""
    out = []
    for sp in spans:
        field = title if sp.field == "title" else description or ""
        if field[sp.start : sp.end] == sp.text:
            out.append(sp)
            continue
        at = field.find(sp.text)
        if at >= 0 and sp.text:
            out.append(EvidenceSpan(sp.field, at, at + len(sp.text), sp.text))
    return tuple(out)
