"""Multi-label metrics and threshold tuning (numpy only; shared by train, export and evaluate)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from schemas.training import facet_of

GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


def binarize(tag_lists: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    index = {t: i for i, t in enumerate(labels)}
    y = np.zeros((len(tag_lists), len(labels)), dtype=bool)
    for row, tags in enumerate(tag_lists):
        for t in tags:
            if t in index:
                y[row, index[t]] = True
    return y


def _prf(tp: float, fp: float, fn: float) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4)}


def report(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Micro and macro P/R/F1 over every gold or predicted tag (tags outside the model's vocabulary
    count as misses), plus micro F1 per facet."""
    per_tag: dict[str, list[int]] = {}
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(g), set(p)
        for t in gs | ps:
            c = per_tag.setdefault(t, [0, 0, 0])
            c[0] += t in gs and t in ps
            c[1] += t in ps and t not in gs
            c[2] += t in gs and t not in ps
    tp, fp, fn = (sum(c[i] for c in per_tag.values()) for i in range(3))
    macro = [_prf(*c) for c in per_tag.values() if c[0] + c[2] > 0]
    facets: dict[str, list[int]] = {}
    for t, c in per_tag.items():
        acc = facets.setdefault(facet_of(t), [0, 0, 0])
        for i in range(3):
            acc[i] += c[i]
    return {
        "items": len(gold),
        "micro": _prf(tp, fp, fn),
        "macro": {
            k: round(float(np.mean([m[k] for m in macro])) if macro else 0.0, 4) for k in ("precision", "recall", "f1")
        },
        "per_facet": {f: _prf(*c) for f, c in sorted(facets.items())},
    }


def micro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float(np.logical_and(y, pred).sum())
    denom = float(y.sum() + pred.sum())
    return 2 * tp / denom if denom else 0.0


def _best_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """Threshold maximising F1 of the flattened decisions (ties: the lower threshold)."""
    best_t, best_f = 0.5, -1.0
    for t in GRID:
        f = micro_f1(y, scores >= t)
        if f > best_f + 1e-12:
            best_t, best_f = float(t), f
    return best_t


def tune_thresholds(
    scores: np.ndarray, y: np.ndarray, labels: Sequence[str], strategy: str, min_positives: int = 3
) -> np.ndarray:
    """`per_facet`: one threshold per facet. `per_tag`: one per tag where validation has at least
    `min_positives` examples, else its facet's threshold."""
    facets = np.array([facet_of(t) for t in labels])
    out = np.full(len(labels), 0.5, dtype=np.float32)
    for f in np.unique(facets):
        cols = facets == f
        out[cols] = _best_threshold(scores[:, cols], y[:, cols])
    if strategy == "per_facet":
        return out
    if strategy != "per_tag":
        raise ValueError(f"unknown threshold strategy {strategy!r}")
    for j in np.nonzero(y.sum(axis=0) >= min_positives)[0]:
        out[j] = _best_threshold(scores[:, j], y[:, j])
    return out


def choose_thresholds(
    scores: np.ndarray, y: np.ndarray, labels: Sequence[str], seed: int = 0
) -> tuple[str, np.ndarray, dict[str, float]]:
    """Measure per-tag vs per-facet thresholds by tuning on one half of the validation split and
    scoring on the other (both ways); return the better strategy re-tuned on all of it."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    halves = (idx[: len(idx) // 2], idx[len(idx) // 2 :])
    results: dict[str, float] = {}
    for strategy in ("per_facet", "per_tag"):
        fs = []
        for a, b in (halves, halves[::-1]):
            th = tune_thresholds(scores[a], y[a], labels, strategy)
            fs.append(micro_f1(y[b], scores[b] >= th))
        results[strategy] = round(float(np.mean(fs)), 4)
    best = max(results, key=lambda s: (results[s], s == "per_facet"))
    return best, tune_thresholds(scores, y, labels, best), results
