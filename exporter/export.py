"""`tagger export`: run directory -> validated ONNX model artifact (+ optional int8).

Export is validated, not trusted: ONNX Runtime logits are compared with PyTorch on real validation
inputs and every mismatch beyond `atol` is listed before failing.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporter.metrics import binarize, micro_f1
from exporter.model import Tagger
from schemas.training import load_rows
from worker.artifact import write_manifest
from worker.contract import bucket, compose_text, pad_batch

log = logging.getLogger(__name__)

OPSET = 17
ATOL = 1e-4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class ExportValidationError(Exception):
    """ONNX Runtime disagrees with PyTorch beyond the tolerance."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="run directory written by `tagger train`")
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.add_argument("--int8", action="store_true", help="also write a dynamically quantized model.int8.onnx")
    p.add_argument("--atol", type=float, default=ATOL, help=f"max |torch - onnx| logit difference ({ATOL})")
    p.add_argument("--parity-items", type=int, default=256, help="validation items compared (default 256)")


def _batches(ids: list[list[int]], pad_id: int, max_items: int = 64) -> list[tuple[list[int], dict[str, np.ndarray]]]:
    out = []
    for group in bucket([len(x) for x in ids], max_items, 1 << 30):
        input_ids, mask = pad_batch([ids[i] for i in group], pad_id)
        out.append((group, {"input_ids": input_ids, "attention_mask": mask}))
    return out


Outputs = tuple[np.ndarray, list[np.ndarray] | None]


def onnx_outputs(session: ort.InferenceSession, ids: list[list[int]], pad_id: int, n_labels: int) -> Outputs:
    """Tag logits [n, labels] and per-item span logits [tokens, classes] (None without a span head)."""
    names = [o.name for o in session.get_outputs()]
    out = np.zeros((len(ids), n_labels), dtype=np.float32)
    spans: list[np.ndarray] | None = [np.zeros(0)] * len(ids) if "span_logits" in names else None
    for group, feed in _batches(ids, pad_id):
        res = dict(zip(names, session.run(names, feed), strict=True))
        out[group] = res["logits"]
        if spans is not None:
            for row, i in enumerate(group):
                spans[i] = res["span_logits"][row, : len(ids[i])]
    return out, spans


def onnx_logits(session: ort.InferenceSession, ids: list[list[int]], pad_id: int, n_labels: int) -> np.ndarray:
    return onnx_outputs(session, ids, pad_id, n_labels)[0]


@torch.no_grad()
def torch_outputs(model: Tagger, ids: list[list[int]], pad_id: int) -> Outputs:
    out = np.zeros((len(ids), model.head.out_features), dtype=np.float32)
    spans: list[np.ndarray] | None = [np.zeros(0)] * len(ids) if model.span_head is not None else None
    for group, feed in _batches(ids, pad_id):
        logits, span_logits = model.forward_all(
            torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])
        )
        out[group] = logits.numpy()
        if spans is not None and span_logits is not None:
            for row, i in enumerate(group):
                spans[i] = span_logits[row, : len(ids[i])].numpy()
    return out, spans


def check_parity(reference: np.ndarray, candidate: np.ndarray, labels: list[str], atol: float) -> float:
    """Max abs difference; raises listing every (item, label) beyond atol."""
    diff = np.abs(reference - candidate)
    bad = np.argwhere(diff > atol)
    if len(bad):
        lines = [
            f"item {i} {labels[j]!r}: torch {reference[i, j]:.6f} onnx {candidate[i, j]:.6f} (|diff| {diff[i, j]:.2e})"
            for i, j in bad[:50]
        ]
        more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
        raise ExportValidationError(
            f"ONNX output differs from PyTorch beyond atol={atol} in {len(bad)} values:\n  " + "\n  ".join(lines) + more
        )
    return float(diff.max()) if diff.size else 0.0


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _export_onnx(model: Tagger, sample: tuple[torch.Tensor, torch.Tensor], onnx_path: Path, with_spans: bool) -> None:
    outputs = ["logits", "span_logits"] if with_spans else ["logits"]
    axes = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size"},
    }
    if with_spans:
        axes["span_logits"] = {0: "batch_size", 1: "sequence_length"}
    torch.onnx.export(
        model,
        sample,
        str(onnx_path),
        input_names=["input_ids", "attention_mask"],
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )


def export(args: argparse.Namespace) -> dict[str, object]:
    started = time.monotonic()
    model, meta = Tagger.load(args.checkpoint)
    labels: list[str] = meta["labels"]  # type: ignore[assignment]
    thresholds = np.asarray(meta["thresholds"], dtype=np.float32)
    pad_id = int(meta.get("pad_token_id") or 0)  # type: ignore[call-overload]
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.checkpoint / "encoder" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(int(meta["max_seq_len"]))  # type: ignore[call-overload]
    val_rows = load_rows(args.checkpoint / "val.jsonl").rows
    val_texts = [compose_text(r.title, r.description) for r in val_rows]
    val_ids = [e.ids for e in tokenizer.encode_batch(val_texts)]

    sample = torch.tensor([val_ids[0]]), torch.ones((1, len(val_ids[0])), dtype=torch.long)
    onnx_path = out / "model.onnx"
    with warnings.catch_warnings():
        # The tracer warns about shape-dependent Python branches in transformers' mask code; the
        # parity check below on varied batch sizes and lengths is what proves the graph general.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _export_onnx(model, sample, onnx_path, with_spans=model.span_head is not None)
    parity_ids = val_ids[: args.parity_items]
    ref_logits, ref_spans = torch_outputs(model, parity_ids, pad_id)
    got_logits, got_spans = onnx_outputs(_session(onnx_path), parity_ids, pad_id, len(labels))
    max_diff = check_parity(ref_logits, got_logits, labels, args.atol)
    if ref_spans is not None and got_spans is not None:
        classes = [f"span-class-{c}" for c in range(ref_spans[0].shape[-1])]
        span_diff = check_parity(np.vstack(ref_spans), np.vstack(got_spans), classes, args.atol)
        print(f"span head parity: max |torch - onnx| = {span_diff:.2e} over {sum(len(x) for x in ref_spans)} tokens")
        max_diff = max(max_diff, span_diff)
    print(f"parity: {len(parity_ids)} validation items, max |torch - onnx| logit = {max_diff:.2e} (atol {args.atol})")

    metrics: dict[str, object] = {
        "validation": meta.get("validation"),
        "validation_with_extractor": meta.get("validation_with_extractor"),
        "parity": {"items": len(parity_ids), "max_abs_logit_diff": max_diff, "atol": args.atol},
    }
    int8_info = None
    if args.int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8_path = out / "model.int8.onnx"
        quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
        sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
        s32 = sig(onnx_logits(_session(onnx_path), val_ids, pad_id, len(labels)))
        s8 = sig(onnx_logits(_session(int8_path), val_ids, pad_id, len(labels)))
        d32, d8 = s32 >= thresholds, s8 >= thresholds
        y = binarize([r.tags for r in val_rows], labels)
        int8_info = {
            "items": len(val_ids),
            "max_abs_score_diff": round(float(np.abs(s32 - s8).max()), 5),
            "decision_agreement": round(float((d32 == d8).mean()), 6),
            "identical_tag_sets": round(float((d32 == d8).all(axis=1).mean()), 4),
            "micro_f1_fp32": round(micro_f1(y, d32), 4),
            "micro_f1_int8": round(micro_f1(y, d8), 4),
        }
        print("int8 vs fp32 on the validation split:", json.dumps(int8_info))

    for name in TOKENIZER_FILES:
        src = args.checkpoint / "encoder" / name
        if src.is_file():
            shutil.copy(src, out / name)
    manifest = write_manifest(
        out,
        base_model=str(meta["base_model"]),
        labels=labels,
        thresholds=[float(t) for t in thresholds],
        threshold_strategy=str(meta.get("threshold_strategy", "per_tag")),
        opset=OPSET,
        max_seq_len=int(meta["max_seq_len"]),  # type: ignore[call-overload]
        pad_token_id=pad_id,
        extract_facets=list(meta.get("extract_facets") or []),  # type: ignore[call-overload]
        metrics=metrics,
        int8=int8_info,
        training={k: meta.get(k) for k in ("seed", "steps", "epochs_done", "train_rows", "train_seconds")},
    )
    print(f"wrote {out} (model_version {manifest.model_version}) in {time.monotonic() - started:.0f} s")
    return manifest.model_dump()


def run(args: argparse.Namespace) -> int:
    try:
        export(args)
    except ExportValidationError as exc:
        print(f"export failed validation: {exc}")
        return 1
    return 0
