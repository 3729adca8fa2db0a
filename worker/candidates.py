"""Extraction by candidate spans: every short token span near the start of the text is a candidate
value of each extractive facet, scored by a logistic model over hashed lexical features of the span
and its context (its position, its tokens, the tokens around it, their shapes).

Why beside the encoder's span head: most catalog brands are the first one to four words of the
title ("Alisha Solid Women's Shorts"), which a linear model over a few context features learns from
a few thousand titles in seconds, while the span head of a small encoder needs more training steps
than a CPU budget gives it (measured on Flipkart, grouped split: brand F1 0.62 with the span head
and the n-gram channel, 0.82 with candidate spans). It is pure numpy at serving time.

Tokens are those of the lexical channel (`worker.lexical`): runs of letters/digits, each CJK
character a token of its own, so a CJK candidate is a run of characters. Spans index the original
text (the character offsets of its first and last token), so they serve as evidence too.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.lexical import _TOKEN, normalise

CANDIDATES_FILE = "candidates.json"
CANDIDATE_WEIGHTS_FILE = "candidates.npz"
BITS = 20
MAX_START = 32  # candidates start among the first tokens: titles lead, descriptions trail


@dataclass(frozen=True)
class Candidate:
    start: int  # character offsets in the original text
    end: int
    features: list[int]  # hashed feature ids


def _shape(token: str) -> str:
    return "".join("X" if c.isupper() else "x" if c.islower() else "d" if c.isdigit() else "c" for c in token[:4])


def _h(feature: str) -> int:
    return zlib.crc32(feature.encode()) & ((1 << BITS) - 1)


def candidates(text: str, max_tokens: int) -> list[Candidate]:
    """Every span of 1..max_tokens tokens starting among the first MAX_START tokens, with its
    hashed features (one definition for training and serving)."""
    found = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]
    words = [normalise(t) for t, _, _ in found]
    shapes = [_shape(t) for t, _, _ in found]
    n = len(found)
    out = []
    for s in range(min(MAX_START, n)):
        prev = words[s - 1] if s else "<s>"
        for length in range(1, max_tokens + 1):
            e = s + length  # exclusive token index
            if e > n:
                break
            nxt = words[e] if e < n else "<e>"
            feats = [
                f"p={min(s, 8)}",
                f"l={length}",
                f"pl={min(s, 8)},{length}",
                f"f={words[s]}",
                f"z={words[e - 1]}",
                f"s={' '.join(words[s:e])}",
                f"n={nxt}",
                f"v={prev}",
                f"nn={' '.join(words[e : e + 2])}",
                f"ns={shapes[e] if e < n else '<e>'}",
                f"fs={shapes[s]}",
                f"vs={shapes[s - 1] if s else '<s>'}",
                *(f"i={w}" for w in words[s:e]),
            ]
            out.append(Candidate(found[s][1], found[e - 1][2], [_h(f) for f in feats]))
    return out


def clean_value(text: str) -> str:
    return " ".join(text.split()).strip(" -,/.")


@dataclass(frozen=True)
class CandidateExtractor:
    """Per extractive facet: a weight per hashed feature and a bias (a logistic model), and the
    decision threshold chosen on validation. Single-valued facets keep their best span."""

    facets: list[str]
    weights: np.ndarray  # [facets, 2**BITS] float32
    bias: np.ndarray  # [facets]
    thresholds: np.ndarray  # [facets]
    single: list[bool]  # per facet: one value per item
    max_tokens: int

    def scores(self, text: str) -> tuple[list[Candidate], np.ndarray]:
        """The text's candidates and their probabilities [candidates, facets]."""
        cands = candidates(text, self.max_tokens)
        if not cands:
            return cands, np.zeros((0, len(self.facets)), dtype=np.float32)
        lengths = np.fromiter((len(c.features) for c in cands), dtype=np.int64, count=len(cands))
        ids = np.fromiter((f for c in cands for f in c.features), dtype=np.int64, count=int(lengths.sum()))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        z = np.add.reduceat(self.weights[:, ids], starts, axis=1).T + self.bias
        return cands, (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def spans(self, text: str, thresholds: np.ndarray | None = None) -> list[tuple[str, int, int, float]]:
        """(facet, start, end, score) over the threshold: per facet, best first, spans that do not
        overlap a better one; one per single-valued facet."""
        th = self.thresholds if thresholds is None else thresholds
        cands, probs = self.scores(text)
        out: list[tuple[str, int, int, float]] = []
        for j, facet in enumerate(self.facets):
            taken: list[tuple[int, int]] = []
            for k in np.argsort(-probs[:, j], kind="stable"):
                p = float(probs[k, j])
                if p < th[j]:
                    break
                c = cands[k]
                if any(c.start < e and s < c.end for s, e in taken) or not clean_value(text[c.start : c.end]):
                    continue
                taken.append((c.start, c.end))
                out.append((facet, c.start, c.end, p))
                if self.single[j]:
                    break
        return out

    def extract(self, text: str, facets: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """`facet:value` tags of the served facets (all by default), with their probabilities."""
        served = set(self.facets if facets is None else facets)
        return [
            (f"{facet}:{clean_value(text[s:e])}", round(p, 6)) for facet, s, e, p in self.spans(text) if facet in served
        ]

    def save(self, directory: Path) -> list[str]:
        (directory / CANDIDATES_FILE).write_text(
            json.dumps(
                {
                    "facets": self.facets,
                    "bias": [float(b) for b in self.bias],
                    "thresholds": [float(t) for t in self.thresholds],
                    "single": self.single,
                    "max_tokens": self.max_tokens,
                    "bits": BITS,
                },
                ensure_ascii=False,
            )
        )
        rows, cols = np.nonzero(self.weights)
        np.savez_compressed(
            directory / CANDIDATE_WEIGHTS_FILE,
            rows=rows.astype(np.int32),
            cols=cols.astype(np.int32),
            values=self.weights[rows, cols].astype(np.float32),
        )
        return [CANDIDATES_FILE, CANDIDATE_WEIGHTS_FILE]

    @classmethod
    def load(cls, directory: Path) -> CandidateExtractor:
        meta = json.loads((directory / CANDIDATES_FILE).read_text())
        if meta["bits"] != BITS:
            raise ValueError(f"{directory}: candidate features hashed to {meta['bits']} bits, this code uses {BITS}")
        weights = np.zeros((len(meta["facets"]), 1 << BITS), dtype=np.float32)
        with np.load(directory / CANDIDATE_WEIGHTS_FILE) as z:
            weights[z["rows"], z["cols"]] = z["values"]
        return cls(
            list(meta["facets"]),
            weights,
            np.asarray(meta["bias"], dtype=np.float32),
            np.asarray(meta["thresholds"], dtype=np.float32),
            [bool(s) for s in meta["single"]],
            int(meta["max_tokens"]),
        )
