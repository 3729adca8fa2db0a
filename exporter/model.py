"""The tagger network: a pretrained encoder, mean pooling and a linear multi-label head."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

HEAD_FILE = "head.pt"
META_FILE = "tagger.json"


class Tagger(nn.Module):
    def __init__(self, encoder: nn.Module, hidden: int, n_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))

    @classmethod
    def from_base(cls, base_dir: Path, n_labels: int) -> Tagger:
        encoder = AutoModel.from_pretrained(base_dir, **_pooler_kwargs(base_dir))
        return cls(encoder, encoder.config.hidden_size, n_labels)

    def save(self, run_dir: Path, meta: dict[str, object]) -> None:
        self.encoder.save_pretrained(run_dir / "encoder")
        torch.save(self.head.state_dict(), run_dir / HEAD_FILE)
        (run_dir / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> tuple[Tagger, dict[str, object]]:
        meta = json.loads((run_dir / META_FILE).read_text())
        encoder = AutoModel.from_pretrained(run_dir / "encoder", **_pooler_kwargs(run_dir / "encoder"))
        model = cls(encoder, encoder.config.hidden_size, len(meta["labels"]))  # type: ignore[arg-type]
        model.head.load_state_dict(torch.load(run_dir / HEAD_FILE, weights_only=True))
        model.eval()
        return model, meta


def _is_bert(model_dir: Path) -> bool:
    return AutoConfig.from_pretrained(model_dir).model_type in {"bert", "xlm-roberta", "roberta"}


def _pooler_kwargs(model_dir: Path) -> dict[str, bool]:
    return {"add_pooling_layer": False} if _is_bert(model_dir) else {}
