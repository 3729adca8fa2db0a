"""The lexical channel: TF-IDF word and character n-grams with one sparse linear layer per tag.

A small frozen encoder misses what n-grams catch: rare brands, model numbers, store jargon. This
channel is fitted at training time (`exporter/lexical_fit.py`) and served here with numpy only, so
the worker image needs neither torch nor scikit-learn and `predict` and the worker score alike.

Features (one definition, used by training and serving):
- text: Unicode NFKC, case-folded;
- tokens: runs of letters/digits, except that every CJK character is a token of its own (CJK has no
  spaces, so "word" n-grams over CJK are character n-grams);
- word block: token unigrams and bigrams;
- char block: character 2-4-grams inside each space-padded non-CJK token (`char_wb`) and 2-4-grams
  of each CJK run;
- weights: sublinear tf (1 + log tf) x smoothed idf, each block L2-normalised.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOCAB_FILE = "lexical.json"
WEIGHTS_FILE = "lexical.npz"

_CJK = "\u2e80-\u2fff\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_RUN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+")
_IS_CJK = re.compile(rf"[{_CJK}]")


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def word_features(text: str) -> list[str]:
    """Token unigrams and bigrams (`w:` prefix) of normalised text."""
    tokens = _TOKEN.findall(text)
    return [f"w:{t}" for t in tokens] + [f"w:{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


def char_features(text: str) -> list[str]:
    """Character 2-4-grams (`c:` prefix): space-padded inside Latin-like tokens, plain over CJK runs."""
    out: list[str] = []
    for run in _RUN.findall(text):
        padded = run if _IS_CJK.match(run) else f" {run} "
        for n in (2, 3, 4):
            out.extend(f"c:{padded[i : i + n]}" for i in range(len(padded) - n + 1))
        if len(padded) == 1:  # a lone CJK character is still a feature
            out.append(f"c:{padded}")
    return out


def weighted(features: Sequence[str], vocab: dict[str, int], idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(column indices, L2-normalised tf-idf values) of one block; unknown features are dropped."""
    counts = Counter(vocab[f] for f in features if f in vocab)
    if not counts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    vals = (1.0 + np.log(tf)) * idf[cols]
    vals /= np.linalg.norm(vals) or 1.0
    return cols, vals.astype(np.float32)


@dataclass(frozen=True)
class Featurizer:
    """Feature string -> column, one vocabulary over both blocks; idf per column."""

    vocab: dict[str, int]
    idf: np.ndarray

    @classmethod
    def fit(cls, texts: Sequence[str], min_df: int = 2) -> Featurizer:
        df: Counter[str] = Counter()
        for text in texts:
            norm = normalise(text)
            df.update(set(word_features(norm)) | set(char_features(norm)))
        kept = sorted(f for f, c in df.items() if c >= min_df)
        n = len(texts)
        idf = np.array([math.log((1 + n) / (1 + df[f])) + 1.0 for f in kept], dtype=np.float64)
        return cls({f: i for i, f in enumerate(kept)}, idf)

    def __len__(self) -> int:
        return len(self.vocab)

    def transform(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse rows as (row, col, value) triples, rows in input order."""
        rows, cols, vals = [], [], []
        for i, text in enumerate(texts):
            norm = normalise(text)
            for block in (word_features(norm), char_features(norm)):
                c, v = weighted(block, self.vocab, self.idf)
                rows.append(np.full(len(c), i, dtype=np.int64))
                cols.append(c)
                vals.append(v)
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


@dataclass(frozen=True)
class LexicalModel:
    """Sparse linear tag logits: for each feature column, the tags it votes for and their weights
    (CSR by feature: `indptr`, `tags`, `weights`), plus one bias per tag."""

    featurizer: Featurizer
    indptr: np.ndarray  # [features + 1]
    tags: np.ndarray  # [nonzeros] tag index
    weights: np.ndarray  # [nonzeros]
    bias: np.ndarray  # [labels]

    @property
    def n_labels(self) -> int:
        return len(self.bias)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """[n, labels] float32 logits."""
        out = np.tile(self.bias.astype(np.float32), (len(texts), 1))
        rows, cols, vals = self.featurizer.transform(texts)
        if not len(cols):
            return out
        starts, ends = self.indptr[cols], self.indptr[cols + 1]
        lens = ends - starts
        total = int(lens.sum())
        if not total:
            return out
        # Expand every (item, feature) pair into that feature's non-zero tag weights, then sum
        # per (item, tag) with one bincount: a sparse x sparse product without scipy.
        first = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
        flat = np.repeat(rows, lens) * self.n_labels + self.tags[first]
        contrib = np.repeat(vals, lens) * self.weights[first]
        out += np.bincount(flat, weights=contrib, minlength=len(texts) * self.n_labels).reshape(out.shape).astype(
            np.float32
        )
        return out

    def save(self, directory: Path) -> list[str]:
        """Writes the vocabulary (JSON) and the weights (npz); returns the file names."""
        ordered = sorted(self.featurizer.vocab, key=self.featurizer.vocab.__getitem__)
        (directory / VOCAB_FILE).write_text(json.dumps({"features": ordered}, ensure_ascii=False))
        np.savez(
            directory / WEIGHTS_FILE,
            idf=self.featurizer.idf,
            indptr=self.indptr,
            tags=self.tags,
            weights=self.weights,
            bias=self.bias,
        )
        return [VOCAB_FILE, WEIGHTS_FILE]

    @classmethod
    def load(cls, directory: Path) -> LexicalModel:
        features = json.loads((directory / VOCAB_FILE).read_text())["features"]
        with np.load(directory / WEIGHTS_FILE) as z:
            arrays = {k: z[k] for k in ("idf", "indptr", "tags", "weights", "bias")}
        if len(arrays["indptr"]) != len(features) + 1 or len(arrays["idf"]) != len(features):
            raise ValueError(f"{directory}: lexical vocabulary and weights disagree in size")
        return cls(
            Featurizer({f: i for i, f in enumerate(features)}, arrays["idf"]),
            arrays["indptr"].astype(np.int64),
            arrays["tags"].astype(np.int64),
            arrays["weights"].astype(np.float32),
            arrays["bias"].astype(np.float32),
        )

    @classmethod
    def from_dense(cls, featurizer: Featurizer, coef: np.ndarray, bias: np.ndarray, keep_per_tag: int) -> LexicalModel:
        """From a dense [labels, features] weight matrix, keeping each tag's `keep_per_tag` largest
        |weights| (the rest are near zero after L2-regularised fitting and cost memory only)."""
        n_labels, n_features = coef.shape
        keep = min(keep_per_tag, n_features)
        top = np.argpartition(-np.abs(coef), keep - 1, axis=1)[:, :keep] if keep < n_features else None
        tag_idx, feat_idx = (
            (np.repeat(np.arange(n_labels), keep), top.ravel())
            if top is not None
            else np.nonzero(np.ones_like(coef, dtype=bool))
        )
        w = coef[tag_idx, feat_idx]
        nz = w != 0
        tag_idx, feat_idx, w = tag_idx[nz], feat_idx[nz], w[nz]
        order = np.lexsort((tag_idx, feat_idx))
        tag_idx, feat_idx, w = tag_idx[order], feat_idx[order], w[order]
        indptr = np.zeros(n_features + 1, dtype=np.int64)
        np.add.at(indptr, feat_idx + 1, 1)
        return cls(
            featurizer, np.cumsum(indptr), tag_idx.astype(np.int64), w.astype(np.float32), bias.astype(np.float32)
        )
