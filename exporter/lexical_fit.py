"""Fitting the lexical channel (`worker/lexical.py`): TF-IDF n-grams -> one linear layer over all tags.

Trained with torch as a sparse bag of weighted features (`EmbeddingBag` with sparse gradients, so a
step touches only the features present in its batch): one-vs-rest logistic regression for every
tag at once, a few seconds per epoch where scikit-learn's per-tag liblinear took minutes per
hundred tags. Only the largest weights of each tag are kept for serving.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from worker.lexical import Featurizer, LexicalModel

log = logging.getLogger(__name__)


def fit_lexical(
    texts: Sequence[str],
    y: np.ndarray,
    *,
    epochs: int = 12,
    lr: float = 2.0,
    batch_size: int = 0,
    l2: float = 0.0,
    keep_per_tag: int = 4000,
    seed: int = 13,
    min_df: int = 2,
) -> LexicalModel:
    """y: [n, labels] bool. Returns the fitted channel (sparse weights, ready to serve)."""
    featurizer = Featurizer.fit(texts, min_df=min_df)
    rows, cols, vals = featurizer.transform(texts)
    n, n_labels = y.shape
    starts = np.searchsorted(rows, np.arange(n + 1))
    gen = torch.Generator().manual_seed(seed)
    bag = torch.nn.EmbeddingBag(max(1, len(featurizer)), n_labels, mode="sum", sparse=True)
    torch.nn.init.zeros_(bag.weight)
    prior = torch.tensor(y.mean(0), dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
    bias = torch.nn.Parameter(torch.log(prior / (1 - prior)))
    # Plain SGD on the sparse rows: SparseAdam's per-row state made a step 4x dearer (measured),
    # and with L2-normalised inputs a linearly decaying SGD step converges in a few epochs.
    opt_sparse = torch.optim.SGD(list(bag.parameters()), lr=lr)
    opt_dense = torch.optim.Adam([bias], lr=0.01)
    batch_size = batch_size or int(np.clip(n // 50, 16, 256))
    total_steps = epochs * math.ceil(n / batch_size)
    step = 0
    target = torch.tensor(y, dtype=torch.float32)
    cols_t, vals_t = torch.from_numpy(cols), torch.from_numpy(vals)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).tolist()
        total = 0.0
        for b in range(0, n, batch_size):
            items = perm[b : b + batch_size]
            spans = [(int(starts[i]), int(starts[i + 1])) for i in items]
            index = torch.cat([cols_t[s:e] for s, e in spans])
            weights = torch.cat([vals_t[s:e] for s, e in spans])
            offsets = torch.tensor([0, *np.cumsum([e - s for s, e in spans])[:-1].tolist()], dtype=torch.long)
            logits = bag(index, offsets, per_sample_weights=weights) + bias
            loss = loss_fn(logits, target[items]) / len(items)
            for g in opt_sparse.param_groups:
                g["lr"] = lr * (1.0 - step / total_steps)
            step += 1
            opt_sparse.zero_grad()
            opt_dense.zero_grad()
            loss.backward()
            opt_sparse.step()
            opt_dense.step()
            if l2:  # weight decay on the rows this batch touched (a dense decay would touch every feature)
                with torch.no_grad():
                    touched = index.unique()
                    bag.weight[touched] *= 1.0 - lr * l2
            total += float(loss.detach()) * len(items)
        log.info("lexical epoch %d/%d loss %.4f", epoch + 1, epochs, total / n)
    coef = bag.weight.detach().numpy().T  # [labels, features]
    return LexicalModel.from_dense(featurizer, coef, bias.detach().numpy(), keep_per_tag)
