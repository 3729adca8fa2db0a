"""Training of the candidate-span extractor (`worker.candidates`): one logistic model per
extractive facet over hashed span features, thresholds chosen on validation."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.linear_model import LogisticRegression

from worker.candidates import BITS, CandidateExtractor, candidates, clean_value
from worker.lexical import _TOKEN, normalise

log = logging.getLogger(__name__)
THRESHOLDS = np.round(np.arange(0.1, 0.91, 0.05), 2)


def gold_values(tags: Sequence[str], facet: str) -> set[str]:
    """Normalised values of a facet's tags, `/`-separated alternatives included."""
    out: set[str] = set()
    for tag in tags:
        f, _, value = tag.partition(":")
        if f != facet:
            continue
        out.add(normalise(clean_value(value)))
        if "/" in value:
            out.update(normalise(clean_value(p)) for p in value.split("/") if len(p.strip()) > 1)
    return out


def max_span_tokens(texts: Sequence[str], tag_lists: Sequence[Sequence[str]], facets: Sequence[str]) -> int:
    """The span length (tokens) that covers 98% of the values that occur in their texts, in [2, 10]."""
    lengths = [
        len(_TOKEN.findall(value))
        for text, tags in zip(texts, tag_lists, strict=True)
        for facet in facets
        for value in gold_values(tags, facet)
        if value and value in normalise(text)
    ]
    return int(np.clip(np.quantile(lengths, 0.98) if lengths else 4, 2, 10))


def fit_candidates(
    texts: Sequence[str],
    tag_lists: Sequence[Sequence[str]],
    facets: Sequence[str],
    single: Sequence[bool],
    val_texts: Sequence[str],
    val_tags: Sequence[Sequence[str]],
    seed: int = 13,
    max_negatives: int = 300_000,
    c: float = 1.0,
) -> CandidateExtractor:
    """Positives are candidates whose normalised text is a gold value of the facet; negatives are
    all other candidates (subsampled past `max_negatives`, reweighted so the model stays calibrated)."""
    max_tokens = max_span_tokens(texts, tag_lists, facets)
    cands = [candidates(t, max_tokens) for t in texts]
    keys = [[normalise(clean_value(text[c.start : c.end])) for c in cs] for text, cs in zip(texts, cands, strict=True)]
    indptr = np.cumsum([0, *(len(c.features) for cs in cands for c in cs)])
    ids = np.fromiter((f for cs in cands for c in cs for f in c.features), dtype=np.int64, count=int(indptr[-1]))
    x = csr_matrix((np.ones(len(ids), dtype=np.float32), ids, indptr), shape=(len(indptr) - 1, 1 << BITS))
    rng = np.random.default_rng(seed)
    weights = np.zeros((len(facets), 1 << BITS), dtype=np.float32)
    bias = np.zeros(len(facets), dtype=np.float32)
    for j, facet in enumerate(facets):
        y = np.fromiter(
            (
                k in gold
                for ks, tags in zip(keys, tag_lists, strict=True)
                for gold in [gold_values(tags, facet)]
                for k in ks
            ),
            dtype=bool,
            count=x.shape[0],
        )
        negatives = int((~y).sum())
        keep_rate = min(1.0, max_negatives / max(negatives, 1))
        keep = y | (rng.random(len(y)) < keep_rate)
        sample_weight = np.where(y[keep], 1.0, 1.0 / keep_rate)
        if y.sum() == 0:
            bias[j] = -20.0
            continue
        model = LogisticRegression(C=c, max_iter=300)
        model.fit(x[keep], y[keep], sample_weight=sample_weight)
        weights[j] = model.coef_[0]
        bias[j] = model.intercept_[0]
        log.info("candidate spans, %s: %d positives of %d candidates", facet, int(y.sum()), len(y))
    extractor = CandidateExtractor(
        list(facets), weights, bias, np.full(len(facets), 0.5, dtype=np.float32), list(single), max_tokens
    )
    return dataclasses.replace(extractor, thresholds=tune_candidate_thresholds(extractor, val_texts, val_tags))


def tune_candidate_thresholds(
    extractor: CandidateExtractor, texts: Sequence[str], tag_lists: Sequence[Sequence[str]]
) -> np.ndarray:
    """Per facet, the threshold with the best F1 of its extracted values on validation."""
    zero = np.zeros(len(extractor.facets), dtype=np.float32)
    found = [extractor.spans(t, zero + THRESHOLDS[0]) for t in texts]
    chosen = np.full(len(extractor.facets), 0.5, dtype=np.float32)
    for j, facet in enumerate(extractor.facets):
        best = -1.0
        for th in THRESHOLDS:
            tp = fp = fn = 0
            for text, spans, tags in zip(texts, found, tag_lists, strict=True):
                pred = {normalise(clean_value(text[s:e])) for f, s, e, p in spans if f == facet and p >= th}
                gold = {normalise(clean_value(t.partition(":")[2])) for t in tags if t.partition(":")[0] == facet}
                tp += len(pred & gold)
                fp += len(pred - gold)
                fn += len(gold - pred)
            f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
            if f1 > best:
                best, chosen[j] = f1, th
        log.info("candidate spans, %s: threshold %.2f, validation F1 %.4f", facet, chosen[j], best)
    return chosen
