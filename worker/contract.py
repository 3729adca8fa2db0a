"""The model contract shared by trainer, exporter, offline `predict` and the worker: how a product
becomes model text, how texts are bucketed and padded, and how scores become tags. Pure (numpy only):
importing it loads neither torch nor ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def compose_text(title: str, description: str | None = None) -> str:
    """The model's input text; must match what the trainer used."""
    title = " ".join(title.split())
    if description and description.strip():
        return f"{title} . {' '.join(description.split())}"
    return title


def bucket(lengths: Sequence[int], max_items: int, max_tokens: int) -> list[list[int]]:
    """Split item indices into sub-batches sorted by length, each within max_items and
    max_tokens counted as padded tokens (items x longest)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max(lengths[i], max((lengths[j] for j in current), default=0))
        if current and (len(current) + 1 > max_items or (len(current) + 1) * longest > max_tokens):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def pad_batch(ids: Sequence[Sequence[int] | np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 [n, longest], right-padded with `pad_id`."""
    longest = max(len(x) for x in ids)
    input_ids = np.full((len(ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return input_ids, mask


def over_threshold(row: np.ndarray, thresholds: np.ndarray, labels: Sequence[str]) -> list[tuple[str, float]]:
    """The classifier's tags for one item: every label whose score reaches its threshold."""
    return [(labels[int(j)], float(row[j])) for j in np.nonzero(row >= thresholds)[0]]
