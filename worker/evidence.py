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
from typing import NamedTuple

import numpy as np

from schemas.training import facet_of
from worker.contract import HIERARCHY_SEPARATOR, parent_of, slot_of
from worker.lexical import _IS_CJK, _TOKEN, LexicalChannel, normalise
from worker.spans import find_span

MAX_FEATURES = 6  # strongest lexical features mapped to text per tag
MAX_CANDIDATES = 3  # near-miss tags kept per item


class EvidenceSpan(NamedTuple):
    """A span of an original field. A named tuple, as `Tag`: cache hits build several per event."""

    field: str  # "title" | "description"
    start: int
    end: int
    text: str


class FieldText:
    """One original field, normalised like the lexical features, with each normalised character's
    index in the original and the tokens of `worker.lexical`."""

    def __init__(self, name: str, text: str) -> None:
        self.name, self.text = name, text
        self.src: list[int] | None = None  # None: normalised index == original index
        if text.isascii():  # NFKC leaves ASCII alone and case folding is lower(): one to one
            self.norm = text.lower()
        else:
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
        self._found: dict[str, list[tuple[int, int]]] = {}  # feature -> spans (an item's tags share features)

    def span(self, start: int, end: int) -> EvidenceSpan:
        """Normalised [start, end) -> the original characters they came from."""
        a, b = (start, end) if self.src is None else (self.src[start], self.src[end - 1] + 1)
        return EvidenceSpan(self.name, a, b, self.text[a:b])

    def feature_spans(self, feature: str) -> list[tuple[int, int]]:
        """Where a lexical feature (`w:tok`, `w:a b`, `c:gram`) occurs, in normalised indices."""
        found = self._found.get(feature)
        if found is None:
            found = self._found[feature] = self._feature_spans(feature)
        return found

    def _feature_spans(self, feature: str) -> list[tuple[int, int]]:
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
        words = [tok for tok in self.by_token if body in f" {tok} "]
        return sorted(self.tokens[k][1:] for tok in words for k in self.by_token[tok])


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


@dataclass(frozen=True)
class Neighbourhood:
    """One query's neighbours with their terms w_n * x_f * nb_f / sim_n, one per feature f a neighbour
    shares with the query (flat arrays: which neighbour, which query feature, the term). Built once
    per item, vectorised; each of its tags then sums the terms of the neighbours that carry it."""

    query_cols: np.ndarray  # [query features] lexical columns
    labels: list[frozenset[int]]  # per kept neighbour: its label ids
    neighbour: np.ndarray  # [terms] index into `labels`
    feature: np.ndarray  # [terms] index into `query_cols`
    terms: np.ndarray  # [terms]

    @classmethod
    def of(cls, lexical: LexicalChannel, item: TraceItem) -> Neighbourhood:
        cols, vals, top, sims, weights = item
        index, rows = lexical.index, lexical.index.item_rows
        keep = (weights > 0) & (sims > 0)
        top, scale = top[keep], weights[keep] / sims[keep]
        spans = [(rows.indptr[n], rows.indptr[n + 1]) for n in top.tolist()]
        indices = np.concatenate([rows.indices[a:b] for a, b in spans]) if spans else np.zeros(0, dtype=np.int64)
        data = np.concatenate([rows.data[a:b] for a, b in spans]) if spans else np.zeros(0)
        order = np.argsort(cols)
        sorted_cols = cols[order]
        pos = np.minimum(np.searchsorted(sorted_cols, indices), max(0, len(sorted_cols) - 1))
        shared = sorted_cols[pos] == indices if len(sorted_cols) else np.zeros(len(indices), dtype=bool)
        neighbour = np.repeat(np.arange(len(top)), [b - a for a, b in spans])[shared]
        feature = order[pos[shared]]
        terms = scale[neighbour] * vals[feature] * data[shared]
        labels = [
            frozenset(index.label_ids[index.label_indptr[n] : index.label_indptr[n + 1]].tolist()) for n in top.tolist()
        ]
        return cls(cols, labels, neighbour, feature, terms)

    def shares(self, label: int) -> tuple[np.ndarray, np.ndarray]:
        """(feature columns, their shares of `label`'s neighbour score); the shares add up to it."""
        carry = np.fromiter((label in ids for ids in self.labels), dtype=bool, count=len(self.labels))
        if not carry.any():
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        mask = carry[self.neighbour]
        per_feature = np.bincount(self.feature[mask], weights=self.terms[mask], minlength=len(self.query_cols))
        nonzero = np.nonzero(per_feature)[0]
        return self.query_cols[nonzero], per_feature[nonzero]


def feature_shares(lexical: LexicalChannel, item: TraceItem, label: int) -> dict[int, float]:
    """Each query feature's share of `label`'s neighbour score (they add up to that score)."""
    cols, shares = Neighbourhood.of(lexical, item).shares(label)
    return dict(zip(cols.tolist(), shares.tolist(), strict=True))


def lexical_spans(
    basis: ExplainBasis, around: Neighbourhood, label: int, fields: Sequence[FieldText]
) -> list[tuple[EvidenceSpan, float]]:
    """The text behind a label's lexical score: spans with the summed share of their features."""
    cols, shares = around.shares(label)
    if not len(cols):
        return []
    strongest = np.argsort(-shares)[:MAX_FEATURES] if len(shares) > MAX_FEATURES else np.argsort(-shares)
    found: dict[EvidenceSpan, float] = {}
    for col, share in zip(cols[strongest].tolist(), shares[strongest].tolist(), strict=True):
        if share <= 0:
            break
        for f in fields:
            for s, e in f.feature_spans(basis.feature_names[col]):
                span = f.span(s, e)
                found[span] = found.get(span, 0.0) + share
    return sorted(found.items(), key=lambda kv: -kv[1])


def _overlaps(a: EvidenceSpan, b: EvidenceSpan) -> bool:
    return a.field == b.field and a.start < b.end and b.start < a.end


def neighbourhood(basis: ExplainBasis | None, item: TraceItem | None) -> Neighbourhood | None:
    if basis is None or basis.lexical is None or item is None:
        return None
    return Neighbourhood.of(basis.lexical, item)


def tag_evidence(
    tag: str,
    fields: Sequence[FieldText],
    basis: ExplainBasis | None,
    around: Neighbourhood | None,
    max_spans: int,
) -> tuple[EvidenceSpan, ...]:
    """Value spans first, then the strongest lexical spans; spans never overlap; at most `max_spans`."""
    ranked = value_spans(tag, fields)
    if basis is not None and around is not None and (j := basis.label_index.get(tag)) is not None:
        ranked += [span for span, _ in lexical_spans(basis, around, j, fields)]
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
    """Labels scoring within `margin` below their thresholds that could have changed the tags, highest
    first: not in a single-valued slot that already has a value, and (in a hierarchy) only children
    of a served parent. (Without these rules every Flipkart item had some near miss: a kNN channel
    gives many labels small scores; with them, see README "Human review loop".)"""
    if margin <= 0:
        return []
    t = basis.thresholds
    idx = np.nonzero((row < t) & (row >= t - margin))[0]
    filled = {slot_of(x) for x in served} & basis.single_slots
    out = []
    for j in idx.tolist():
        label = basis.labels[j]
        parent = parent_of(label)
        if label in served or slot_of(label) in filled or (parent is not None and parent not in served):
            continue
        out.append((label, float(row[j])))
    return sorted(out, key=lambda c: -c[1])[:limit]


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
