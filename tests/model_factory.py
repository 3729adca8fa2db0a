"""Tiny models and data for tests: a 2-layer BERT built here (random init, the packaged MiniLM
tokenizer), trained for a few steps and exported with the real `tagger train` / `tagger export`."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

BRANDS = ["Alisha", "Nike", "Samsung", "Sony", "Puma", "Lenovo"]
KINDS = {
    "Clothing": ["cotton shirt", "denim jeans", "cycling shorts", "silk saree"],
    "Electronics": ["smartphone", "laptop", "bluetooth headphones", "smart watch"],
    "Footwear": ["running shoes", "sandals", "sneakers"],
}
COLOURS = ["red", "blue", "black", "white", "green"]


def manifest_fields(labels: list[str]) -> dict[str, object]:
    """The smallest valid `manifest.json` content: per-facet thresholds of 0.5, one fake file hash."""
    from worker.contract import Decisions

    decisions = Decisions(labels=labels, thresholds=[0.5] * len(labels), threshold_strategy="per_facet")
    return {
        "model_version": "v",
        "base_model": "b",
        "decisions": decisions.model_dump(),
        "opset": 17,
        "max_seq_len": 32,
        "files": {"model.onnx": "0" * 64},
    }


def make_rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cat = rng.choice(sorted(KINDS))
        brand = rng.choice(BRANDS)
        title = f"{brand} {rng.choice(COLOURS)} {rng.choice(KINDS[cat])}"
        row: dict[str, object] = {"id": f"p{i}", "title": title, "tags": [f"category:{cat}", f"brand:{brand}"]}
        if i % 7 == 0:
            row["description"] = f"Key features of {title}. Great quality, pack of {1 + i % 3}."
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tiny_base(out: Path) -> Path:
    """A 2-layer, 64-wide BERT with the MiniLM WordPiece tokenizer, saved as an HF directory."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from exporter.base_models import resolve_base_model

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def cli_args(module: object, argv: list[str]) -> argparse.Namespace:
    """Parse argv with a subcommand module's own parser (defaults stay in one place)."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def train_args(data: Path, out: Path, base: Path, *extra: str) -> argparse.Namespace:
    from exporter import train

    return cli_args(
        train,
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--base-model",
            str(base),
            "--epochs",
            "10",
            "--max-minutes",
            "5",
            "--min-tag-count",
            "3",
            "--seed",
            "7",
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--head-lr",
            "1e-2",
            "--max-seq-len",
            "32",
            "--val-percent",
            "20",
            "--train-embeddings",
            *extra,
        ],
    )


def build_tiny_artifact(work: Path, *, steps: int = 40, int8: bool = True) -> Path:
    """Train (real code path) and export a tiny tagger with an extractive brand head; returns the model dir."""
    from exporter import export, train

    work.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(work / "train.jsonl", make_rows(400))
    base = build_tiny_base(work / "base")
    run_dir, model_dir = work / "run", work / "model"
    train.train(train_args(data, run_dir, base, "--max-steps", str(steps)))
    argv = ["--checkpoint", str(run_dir), "--out", str(model_dir), "--parity-items", "64"]
    export.export(cli_args(export, argv + (["--int8"] if int8 else ["--no-int8"])))
    return model_dir
