"""The bar to beat: TF-IDF (word + char n-grams) with one-vs-rest logistic regression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from exporter.data import split
from exporter.metrics import binarize, choose_thresholds
from exporter.train import VAL_SALT, build_labels
from schemas.training import TrainingRow
from worker.contract import compose_text


class TfidfBaseline:
    def __init__(self, min_tag_count: int = 5, c: float = 10.0, analyzer_char: bool = True) -> None:
        self.min_tag_count, self.c, self.analyzer_char = min_tag_count, c, analyzer_char

    def _features(self, texts: Sequence[str], fit: bool = False) -> Any:
        if fit:
            self.word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
            self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True)
            return hstack([self.word.fit_transform(texts), self.char.fit_transform(texts)]).tocsr()
        return hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr()

    def fit(self, rows: Sequence[TrainingRow], seed: int = 13) -> TfidfBaseline:
        """Same protocol as the model: learn on the training part, tune thresholds on validation."""
        train_rows, val_rows = split(rows, 10, salt=VAL_SALT)
        self.labels = build_labels(train_rows, self.min_tag_count)
        x = self._features([compose_text(r.title, r.description) for r in train_rows], fit=True)
        y = binarize([r.tags for r in train_rows], self.labels)
        self.clf = OneVsRestClassifier(LogisticRegression(C=self.c, max_iter=300, solver="liblinear"), n_jobs=1)
        self.clf.fit(x, y)
        val_scores = self.scores([compose_text(r.title, r.description) for r in val_rows])
        y_val = binarize([r.tags for r in val_rows], self.labels)
        self.strategy, self.thresholds, _ = choose_thresholds(val_scores, y_val, self.labels, seed=seed)
        return self

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.clf.predict_proba(self._features(texts)), dtype=np.float32)

    def predict(self, texts: Sequence[str]) -> list[list[str]]:
        s = self.scores(texts)
        return [[self.labels[j] for j in np.nonzero(row >= self.thresholds)[0]] for row in s]
