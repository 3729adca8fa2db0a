"""The tagger network: a pretrained encoder, mean pooling and a linear multi-label head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from worker.contract import RunMeta, run_bucketed

HEAD_FILE = "head.pt"
META_FILE = "tagger.json"


class Tagger(nn.Module):
    """Outputs tag logits [batch, labels]; with an extractive head also BIO span logits
    [batch, sequence, 1 + 2 x extract facets] from the same encoder pass."""

    def __init__(
        self, encoder: nn.Module, hidden: int, n_labels: int, n_span_classes: int = 0, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.encoder: Any = encoder  # a transformers PreTrainedModel
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_labels)
        self.span_head: nn.Linear | None = nn.Linear(hidden, n_span_classes) if n_span_classes else None

    def forward_all(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.head(self.dropout(pooled))
        spans = self.span_head(self.dropout(hidden)) if self.span_head is not None else None
        return logits, spans

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        logits, spans = self.forward_all(input_ids, attention_mask)
        return logits if spans is None else (logits, spans)

    @classmethod
    def from_base(cls, base_dir: Path, n_labels: int, n_span_classes: int = 0) -> Tagger:
        encoder = AutoModel.from_pretrained(base_dir, **_pooler_kwargs(base_dir))
        return cls(encoder, encoder.config.hidden_size, n_labels, n_span_classes)

    def save(self, run_dir: Path, meta: RunMeta) -> None:
        self.encoder.save_pretrained(run_dir / "encoder")
        heads = {"head": self.head.state_dict()}
        if self.span_head is not None:
            heads["span_head"] = self.span_head.state_dict()
        torch.save(heads, run_dir / HEAD_FILE)
        (run_dir / META_FILE).write_text(meta.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> tuple[Tagger, RunMeta]:
        meta = RunMeta.model_validate_json((run_dir / META_FILE).read_text())
        encoder = AutoModel.from_pretrained(run_dir / "encoder", **_pooler_kwargs(run_dir / "encoder"))
        facets = meta.decisions.head_facets
        n_span = 1 + 2 * len(facets) if facets else 0
        model = cls(encoder, encoder.config.hidden_size, len(meta.decisions.labels), n_span)
        heads = torch.load(run_dir / HEAD_FILE, weights_only=True)
        model.head.load_state_dict(heads["head"])
        if model.span_head is not None:
            model.span_head.load_state_dict(heads["span_head"])
        model.eval()
        return model, meta


def _is_bert(model_dir: Path) -> bool:
    return AutoConfig.from_pretrained(model_dir).model_type in {"bert", "xlm-roberta", "roberta"}


def _pooler_kwargs(model_dir: Path) -> dict[str, bool]:
    return {"add_pooling_layer": False} if _is_bert(model_dir) else {}


@torch.no_grad()
def torch_outputs(
    model: Tagger, ids: list[list[int]], pad_id: int, max_items: int = 64
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """PyTorch tag logits [n, labels] and per-item span logits, bucketed like serving."""
    model.eval()

    def run(input_ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        logits, spans = model.forward_all(torch.from_numpy(input_ids), torch.from_numpy(mask))
        return logits.numpy(), spans.numpy() if spans is not None else None

    return run_bucketed(ids, pad_id, model.head.out_features, run, max_items)
