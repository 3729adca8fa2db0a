"""The lexical channel: TF-IDF word and character n-grams, and label transfer from the nearest
training items in that space.

A small encoder misses what n-grams catch: rare brands, model numbers, store jargon, near-duplicate
listings. The index is built at training time from the training part of the catalog and served
here with numpy only, so the worker image needs neither torch nor scikit-learn, and `predict` and
the worker score alike.

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
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix

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

    def matrix(self, texts: Sequence[str]) -> csr_matrix:
        """[n, features] rows scaled to unit length (both blocks together)."""
        rows, cols, vals = self.transform(texts)
        norms = np.sqrt(np.bincount(rows, weights=vals.astype(np.float64) ** 2, minlength=len(texts)))
        return csr_matrix(
            ((vals / np.maximum(norms[rows], 1e-12)).astype(np.float32), (rows, cols)),
            shape=(len(texts), len(self)),
        )


@dataclass
class Trace:
    """What the neighbour channel looked at, chunk by chunk in query order: the query vectors and, per
    query, its neighbours with their similarities and normalised transfer weights (sum 1)."""

    queries: list[csr_matrix] = field(default_factory=list)
    neighbours: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """(query columns, query values, neighbour items, similarities, weights) of query `i`."""
        for query, (top, sims, weights) in zip(self.queries, self.neighbours, strict=True):
            if i < query.shape[0]:
                a, b = query.indptr[i], query.indptr[i + 1]
                return query.indices[a:b], query.data[a:b], top[i], sims[i], weights[i]
            i -= query.shape[0]
        return None


@dataclass(frozen=True)
class NeighbourIndex:
    """Label transfer from the nearest training items: cosine similarity of tf-idf vectors (an
    inverted index: for each feature column, the training items that have it and their weights),
    then each tag's score is the similarity-weighted share of the `k` neighbours that carry it
    (weights = similarity ** `power`, so near-duplicates dominate). Catalogs are full of
    near-duplicate listings; this is what catches their brands and model numbers."""

    featurizer: Featurizer
    indptr: np.ndarray  # [features + 1] postings per feature column
    items: np.ndarray  # [postings] training item index
    values: np.ndarray  # [postings] that item's unit-normalised weight for the feature
    label_indptr: np.ndarray  # [items + 1] tags per training item
    label_ids: np.ndarray  # [tag uses] tag index
    n_labels: int
    k: int = 10
    power: float = 3.0

    @property
    def n_items(self) -> int:
        return len(self.label_indptr) - 1

    @classmethod
    def build(
        cls,
        texts: Sequence[str],
        tags: Sequence[Sequence[int]],
        n_labels: int,
        *,
        k: int = 10,
        power: float = 3.0,
        max_df: float = 1.0,
    ) -> NeighbourIndex:
        """Index the training items (`tags`: tag indices per item, same order as `texts`).

        Features in more than `max_df` of the items keep their place in each vector's norm but get
        no postings (default: none dropped; 0.02 made Flipkart queries 20x cheaper in numpy but cost
        0.02 micro-F1)."""
        featurizer = Featurizer.fit(texts)
        rows, cols, vals = featurizer.transform(texts)
        norms = np.sqrt(np.bincount(rows, weights=vals.astype(np.float64) ** 2, minlength=len(texts)))
        vals = (vals / np.maximum(norms[rows], 1e-12)).astype(np.float32)
        df = np.bincount(cols, minlength=len(featurizer))
        keep = df[cols] <= max(2, max_df * len(texts))
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        order = np.lexsort((rows, cols))
        indptr = np.zeros(len(featurizer) + 1, dtype=np.int64)
        np.add.at(indptr, cols + 1, 1)
        label_indptr = np.cumsum([0, *(len(t) for t in tags)]).astype(np.int64)
        label_ids = np.fromiter((j for t in tags for j in t), dtype=np.int64, count=int(label_indptr[-1]))
        return cls(featurizer, np.cumsum(indptr), rows[order], vals[order], label_indptr, label_ids, n_labels, k, power)

    def similarities(self, texts: Sequence[str]) -> np.ndarray:
        """[n, training items] cosine similarities (a sparse product: scipy's C++ kernel was 13x
        faster than the same product in numpy on Flipkart)."""
        return np.asarray((self.featurizer.matrix(texts) @ self._postings).toarray())

    @cached_property
    def item_rows(self) -> csr_matrix:
        """[training items, features]: each training item's unit vector (evidence reads neighbours' rows)."""
        return self._postings.T.tocsr()

    @cached_property
    def _postings(self) -> csr_matrix:
        return csr_matrix((self.values, self.items, self.indptr), shape=(len(self.featurizer), self.n_items))

    def scores(self, texts: Sequence[str], chunk: int = 128, trace: Trace | None = None) -> np.ndarray:
        """[n, labels] float32 in [0, 1]."""
        return self.scores_of(self.featurizer.matrix(texts), chunk, trace)

    def scores_of(self, x: csr_matrix, chunk: int = 128, trace: Trace | None = None) -> np.ndarray:
        """Scores of featurized queries (`Featurizer.matrix`), in chunks (memory grows with chunk x
        postings). `trace` (optional) records the query vectors and neighbours, for evidence
        (worker/evidence.py)."""
        n = x.shape[0]
        if n > chunk:
            return np.vstack([self.scores_of(x[i : i + chunk], chunk, trace) for i in range(0, n, chunk)])
        out = np.zeros((n, self.n_labels), dtype=np.float32)
        if not n or not self.n_items:
            return out
        sims = np.asarray((x @ self._postings).toarray())
        k = min(self.k, self.n_items)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weight = np.take_along_axis(sims, top, axis=1).clip(min=0.0) ** self.power
        total = weight.sum(axis=1)
        if trace is not None:
            trace.queries.append(x)
            trace.neighbours.append(
                (top, np.take_along_axis(sims, top, axis=1), weight / np.maximum(total, 1e-12)[:, None])
            )
        for i in range(n):
            if total[i] <= 0:
                continue
            for item, w in zip(top[i], weight[i], strict=True):
                ids = self.label_ids[self.label_indptr[item] : self.label_indptr[item + 1]]
                out[i, ids] += w / total[i]
        return out

    def save(self, directory: Path) -> list[str]:
        """Writes the vocabulary (JSON) and the index (npz); returns the file names."""
        ordered = sorted(self.featurizer.vocab, key=self.featurizer.vocab.__getitem__)
        (directory / VOCAB_FILE).write_text(
            json.dumps(
                {"features": ordered, "k": self.k, "power": self.power, "labels": self.n_labels}, ensure_ascii=False
            )
        )
        np.savez(
            directory / WEIGHTS_FILE,
            idf=self.featurizer.idf,
            indptr=self.indptr,
            items=self.items.astype(np.int32),
            values=self.values,
            label_indptr=self.label_indptr,
            label_ids=self.label_ids.astype(np.int32),
        )
        return [VOCAB_FILE, WEIGHTS_FILE]

    @classmethod
    def load(cls, directory: Path) -> NeighbourIndex:
        meta = json.loads((directory / VOCAB_FILE).read_text())
        features = meta["features"]
        with np.load(directory / WEIGHTS_FILE) as z:
            a = {k: z[k] for k in ("idf", "indptr", "items", "values", "label_indptr", "label_ids")}
        if len(a["indptr"]) != len(features) + 1 or len(a["idf"]) != len(features):
            raise ValueError(f"{directory}: lexical vocabulary and index disagree in size")
        return cls(
            Featurizer({f: i for i, f in enumerate(features)}, a["idf"]),
            a["indptr"].astype(np.int64),
            a["items"].astype(np.int64),
            a["values"].astype(np.float32),
            a["label_indptr"].astype(np.int64),
            a["label_ids"].astype(np.int64),
            int(meta["labels"]),
            int(meta["k"]),
            float(meta["power"]),
        )


@dataclass(frozen=True)
class Gazetteer:
    """Known values named in the text: each label's value (and each `/`-separated alternative) as a
    token sequence; when it occurs in a text, the label scores its training precision (how often an
    item whose text names the value carries the tag; smoothed). Tokens as in `word_features`, so a
    CJK value matches inside an unsegmented title."""

    values: dict[tuple[str, ...], list[int]]  # token sequence -> label indices
    precision: np.ndarray  # [labels]
    longest: int

    @staticmethod
    def tokens(text: str) -> tuple[str, ...]:
        return tuple(_TOKEN.findall(normalise(text)))

    @classmethod
    def build(
        cls, labels: Sequence[str], texts: Sequence[str], tags: Sequence[Sequence[int]], max_tokens: int = 8
    ) -> Gazetteer:
        values: dict[tuple[str, ...], list[int]] = {}
        for j, label in enumerate(labels):
            value = label.partition(":")[2]
            alternatives = [value] + [a for a in value.split("/") if len(a.strip()) > 1] if "/" in value else [value]
            for alt in alternatives:
                seq = cls.tokens(alt)
                if seq and len(seq) <= max_tokens and j not in values.get(seq, []):
                    values.setdefault(seq, []).append(j)
        longest = max((len(s) for s in values), default=0)
        named = np.zeros(len(labels))
        right = np.zeros(len(labels))
        probe = cls(values, np.zeros(len(labels), dtype=np.float32), longest)
        for text, item_tags in zip(texts, tags, strict=True):
            for j in probe.named(text):
                named[j] += 1
                right[j] += j in item_tags
        return cls(values, ((right + 0.5) / (named + 1.0)).astype(np.float32), longest)

    def named(self, text: str) -> set[int]:
        """Labels whose value occurs in the text as a whole token sequence."""
        seq = self.tokens(text)
        found: set[int] = set()
        for n in range(1, min(self.longest, len(seq)) + 1):
            for i in range(len(seq) - n + 1):
                found.update(self.values.get(seq[i : i + n], ()))
        return found

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.precision)), dtype=np.float32)
        for i, text in enumerate(texts):
            for j in self.named(text):
                out[i, j] = self.precision[j]
        return out


GAZETTEER_FILE = "gazetteer.json"
SLOTS_FILE = "lexical_slots.npz"


@dataclass(frozen=True)
class SlotRegression:
    """Per single-valued slot (a category level), a softmax regression over the lexical features:
    what a neighbour vote lacks is weights that single out the n-grams that decide a class ("sofa"
    -> furniture) over the ones that merely make two titles alike (a brand, a colour). Measured on
    Flipkart (grouped split): category F1 0.898 with neighbours alone, 0.930 averaged with this.
    Each slot's last class is "none of its labels"."""

    columns: list[np.ndarray]  # per slot: the label indices of its classes
    weights: list[csr_matrix]  # per slot: [features, classes + 1], small weights pruned
    bias: list[np.ndarray]  # per slot: [classes + 1]

    def scores(self, x: csr_matrix, n_labels: int) -> np.ndarray:
        """[n, n_labels] class probabilities in the slots' columns, 0 elsewhere."""
        out = np.zeros((x.shape[0], n_labels), dtype=np.float32)
        for cols, w, b in zip(self.columns, self.weights, self.bias, strict=True):
            z = np.asarray((x @ w).toarray()) + b
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            out[:, cols] = p[:, : len(cols)]
        return out

    def without(self, k: int) -> SlotRegression:
        """The same regressions but the k-th slot's."""
        keep = [i for i in range(len(self.columns)) if i != k]
        return SlotRegression(
            [self.columns[i] for i in keep], [self.weights[i] for i in keep], [self.bias[i] for i in keep]
        )

    @property
    def covered(self) -> np.ndarray:
        return np.concatenate(self.columns) if self.columns else np.zeros(0, dtype=np.int64)

    def save(self, directory: Path) -> list[str]:
        arrays: dict[str, np.ndarray] = {"slots": np.asarray(len(self.columns))}
        for k, (cols, w, b) in enumerate(zip(self.columns, self.weights, self.bias, strict=True)):
            arrays |= {f"columns{k}": cols, f"bias{k}": b, f"data{k}": w.data, f"indices{k}": w.indices}
            arrays |= {f"indptr{k}": w.indptr, f"shape{k}": np.asarray(w.shape)}
        np.savez_compressed(directory / SLOTS_FILE, allow_pickle=False, **arrays)
        return [SLOTS_FILE]

    @classmethod
    def load(cls, directory: Path) -> SlotRegression:
        with np.load(directory / SLOTS_FILE) as z:
            n = int(z["slots"])
            return cls(
                [z[f"columns{k}"].astype(np.int64) for k in range(n)],
                [
                    csr_matrix((z[f"data{k}"], z[f"indices{k}"], z[f"indptr{k}"]), shape=tuple(z[f"shape{k}"]))
                    for k in range(n)
                ],
                [z[f"bias{k}"].astype(np.float32) for k in range(n)],
            )


@dataclass(frozen=True)
class LexicalChannel:
    """The lexical channel served beside the encoder: neighbour label transfer for every tag; in
    single-valued slots (a brand, a category level) averaged with the gazetteer (measured on
    Flipkart: brand F1 0.52 -> 0.62 on validation-tuned decisions; on a multi-valued facet, OpenBG's
    effects, the gazetteer cost F1, so it is not used there)."""

    index: NeighbourIndex
    gazetteer: Gazetteer
    single: np.ndarray  # [labels] bool: the label's slot is single-valued
    slots: SlotRegression | None = None  # trained by the exporter (it needs scikit-learn)

    @classmethod
    def build(
        cls, texts: Sequence[str], tags: Sequence[Sequence[int]], labels: Sequence[str], single: np.ndarray
    ) -> LexicalChannel:
        return cls(NeighbourIndex.build(texts, tags, len(labels)), Gazetteer.build(labels, texts, tags), single)

    def scores(self, texts: Sequence[str], trace: Trace | None = None) -> np.ndarray:
        x = self.index.featurizer.matrix(texts)  # featurizing is the costly part: once for both
        out = self.index.scores_of(x, trace=trace)
        if self.single.any():
            out[:, self.single] = 0.5 * (out[:, self.single] + self.gazetteer.scores(texts)[:, self.single])
        if self.slots is not None and len(texts):
            cols = self.slots.covered
            out[:, cols] = 0.5 * (out[:, cols] + self.slots.scores(x, self.index.n_labels)[:, cols])
        return out

    def save(self, directory: Path) -> list[str]:
        (directory / GAZETTEER_FILE).write_text(
            json.dumps(
                {
                    "values": [[list(seq), ids] for seq, ids in self.gazetteer.values.items()],
                    "precision": self.gazetteer.precision.tolist(),
                    "single": [int(j) for j in np.nonzero(self.single)[0]],
                },
                ensure_ascii=False,
            )
        )
        slots = self.slots.save(directory) if self.slots is not None else []
        return [*self.index.save(directory), GAZETTEER_FILE, *slots]

    @classmethod
    def load(cls, directory: Path, listed: Collection[str] | None = None) -> LexicalChannel:
        """`listed`: the files an artifact's manifest lists (and has verified); slot regressions are
        loaded only when listed there (a run directory has no manifest: when present)."""
        index = NeighbourIndex.load(directory)
        g = json.loads((directory / GAZETTEER_FILE).read_text())
        values = {tuple(seq): list(ids) for seq, ids in g["values"]}
        single = np.zeros(index.n_labels, dtype=bool)
        single[g["single"]] = True
        longest = max((len(s) for s in values), default=0)
        gazetteer = Gazetteer(values, np.asarray(g["precision"], dtype=np.float32), longest)
        has_slots = SLOTS_FILE in listed if listed is not None else (directory / SLOTS_FILE).is_file()
        slots = SlotRegression.load(directory) if has_slots else None
        return cls(index, gazetteer, single, slots)
