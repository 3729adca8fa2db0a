"""`tagger export`: run directory -> validated ONNX model artifact (+ optional int8).

Export is validated, not trusted: ONNX Runtime logits are compared with PyTorch on real validation
inputs and every mismatch beyond `atol` is listed before failing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporter.metrics import binarize, micro_f1
from exporter.model import Tagger, torch_outputs
from exporter.train import predict_tags
from schemas.training import load_rows
from worker.artifact import write_manifest
from worker.candidates import CandidateExtractor
from worker.contract import Manifest, RunMeta, compose_text, default_taxonomy_version, fuse, run_bucketed, sigmoid
from worker.engine import TagEngine
from worker.lexical import LexicalChannel

log = logging.getLogger(__name__)

OPSET = 17
ATOL = 1e-4
# fp16 keeps ~3 significant digits: logits of a few units move by ~1e-3..1e-2 (measured 4.4e-3 on the
# Flipkart MiniLM). Its own tolerance, and a floor on how many tag decisions must stay the same.
FP16_ATOL = 0.05
FP16_MIN_AGREEMENT = 0.999
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class ExportValidationError(Exception):
    """ONNX Runtime disagrees with PyTorch beyond the tolerance."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="run directory written by `tagger train`")
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write a dynamically quantized model.int8.onnx (default: yes; the worker and `predict` serve "
        "it on CPU when present; --no-int8 to skip)",
    )
    p.add_argument(
        "--fp16", action="store_true", help="also write a half-precision model.fp16.onnx (GPUs; float32 I/O)"
    )
    p.add_argument("--atol", type=float, default=ATOL, help=f"max |torch - onnx| logit difference ({ATOL})")
    p.add_argument(
        "--fp16-atol", type=float, default=FP16_ATOL, help=f"max |fp32 - fp16| ONNX logit difference ({FP16_ATOL})"
    )
    p.add_argument(
        "--fp16-min-agreement",
        type=float,
        default=FP16_MIN_AGREEMENT,
        help=f"least share of (item, tag) decisions fp16 must share with fp32 on validation ({FP16_MIN_AGREEMENT})",
    )
    p.add_argument("--parity-items", type=int, default=256, help="validation items compared (default 256)")


Outputs = tuple[np.ndarray, list[np.ndarray] | None]


def onnx_outputs(session: ort.InferenceSession, ids: list[list[int]], pad_id: int, n_labels: int) -> Outputs:
    """Tag logits [n, labels] and per-item span logits [tokens, classes] (None without a span head)."""
    names = [o.name for o in session.get_outputs()]

    def run(input_ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        res = dict(zip(names, session.run(names, {"input_ids": input_ids, "attention_mask": mask}), strict=True))
        return res["logits"], res.get("span_logits")

    return run_bucketed(ids, pad_id, n_labels, run)


def check_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: list[str],
    atol: float,
    names: tuple[str, str] = ("torch", "onnx"),
) -> float:
    """Max abs difference; raises listing every (item, label) beyond atol."""
    diff = np.abs(reference - candidate)
    bad = np.argwhere(diff > atol)
    if len(bad):
        ref, cand = names
        lines = [
            f"item {i} {labels[j]!r}: {ref} {reference[i, j]:.6f} {cand} {candidate[i, j]:.6f} "
            f"(|diff| {diff[i, j]:.2e})"
            for i, j in bad[:50]
        ]
        more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
        raise ExportValidationError(
            f"{cand} output differs from {ref} beyond atol={atol} in {len(bad)} values:\n  " + "\n  ".join(lines) + more
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


def export(args: argparse.Namespace) -> Manifest:
    """Write the artifact into a staging directory beside `--out`, validate it there, then swap it
    in: a failing export never destroys the model that `--out` held before."""
    started = time.monotonic()
    model, meta = Tagger.load(args.checkpoint)
    decisions = meta.decisions
    labels = decisions.labels
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        manifest = _build(args, model, meta, stage)
        _swap_in(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    print(
        f"wrote {out} (model_version {manifest.model_version}, {len(labels)} labels) in "
        f"{time.monotonic() - started:.0f} s"
    )
    return manifest


def _swap_in(stage: Path, out: Path) -> None:
    """Replace `out` by the verified `stage` (the old directory is removed only after the rename)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)


def _build(args: argparse.Namespace, model: Tagger, meta: RunMeta, out: Path) -> Manifest:
    decisions = meta.decisions
    labels = decisions.labels
    pad_id = meta.pad_token_id
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.checkpoint / "encoder" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(meta.max_seq_len)
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

    for name in TOKENIZER_FILES:
        src = args.checkpoint / "encoder" / name
        if src.is_file():
            shutil.copy(src, out / name)
    lexical = LexicalChannel.load(args.checkpoint) if decisions.lexical else None
    if lexical is not None:
        lexical.save(out)
    extractor = CandidateExtractor.load(args.checkpoint) if decisions.candidate_facets else None
    if extractor is not None:
        extractor.save(out)
    int8_path = out / "model.int8.onnx"
    if args.int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    fp16_logit_diff = None
    if args.fp16:
        fp16_path = out / "model.fp16.onnx"
        write_fp16(onnx_path, fp16_path)
        fp16_logits, fp16_spans = onnx_outputs(_session(fp16_path), parity_ids, pad_id, len(labels))
        fp16_logit_diff = check_parity(got_logits, fp16_logits, labels, args.fp16_atol, ("fp32", "fp16"))
        if got_spans is not None and fp16_spans is not None:
            classes = [f"span-class-{c}" for c in range(got_spans[0].shape[-1])]
            pair = ("fp32", "fp16")
            span16 = check_parity(np.vstack(got_spans), np.vstack(fp16_spans), classes, args.fp16_atol, pair)
            fp16_logit_diff = max(fp16_logit_diff, span16)
        print(
            f"fp16 parity: {len(parity_ids)} validation items, max |fp32 - fp16| logit = {fp16_logit_diff:.2e} "
            f"(atol {args.fp16_atol})"
        )
    fields = dict(
        base_model=meta.base_model,
        decisions=decisions,
        opset=OPSET,
        max_seq_len=meta.max_seq_len,
        pad_token_id=pad_id,
        taxonomy_version=meta.taxonomy_version or default_taxonomy_version(decisions.labels),
        training={k: getattr(meta, k) for k in ("seed", "steps", "epochs_done", "train_rows", "train_seconds")},
    )
    write_manifest(out, **fields)  # provisional, so the serving engine can load the staged artifact

    # The served path (TagEngine: ONNX Runtime + lexical channel + decisions, as in `predict` and the
    # worker) must give the tags the trainer's path gives from PyTorch outputs.
    parity_texts = val_texts[: args.parity_items]
    engine = TagEngine(out, extract=True)
    served = [[t.tag for t in tags] for tags in engine.tag_texts(parity_texts)]
    enc = tokenizer.encode_batch(parity_texts)
    lex = lexical.scores(parity_texts) if lexical is not None else None
    fused = fuse(sigmoid(ref_logits), lex, decisions.encoder_weight)
    found = [extractor.extract(t) for t in parity_texts] if extractor is not None else None
    _, expected = predict_tags(parity_texts, [e.offsets for e in enc], fused, ref_spans, decisions, found)
    mismatched = [i for i, (a, b) in enumerate(zip(served, expected, strict=True)) if set(a) != set(b)]
    if mismatched:
        i = mismatched[0]
        raise ExportValidationError(
            f"served tags differ from the trainer's on {len(mismatched)} of {len(parity_texts)} items; "
            f"first: item {i} served {served[i]} expected {expected[i]}"
        )
    print(f"decision parity: served tags equal the trainer's on {len(parity_texts)} validation items")

    metrics: dict[str, object] = {
        "validation": meta.validation,
        "ablation": meta.ablation,
        "parity": {"items": len(parity_ids), "max_abs_logit_diff": max_diff, "atol": args.atol, "tag_sets_equal": 1.0},
    }
    int8_info = fp16_info = None
    if args.int8 or args.fp16:
        y = binarize([r.tags for r in val_rows], labels)
        tags32 = engine.tag_texts(val_texts)
        d32 = binarize([[t.tag for t in x] for x in tags32], labels)
    if args.fp16:
        # Validated on the CPU provider (ORT runs fp16 graphs there, slowly): the same graph a GPU serves.
        tags16 = TagEngine(out, precision="fp16").tag_texts(val_texts)
        d16 = binarize([[t.tag for t in x] for x in tags16], labels)
        fp16_info = {
            "items": len(val_texts),
            "max_abs_logit_diff": fp16_logit_diff,
            "atol": args.fp16_atol,
            "decision_agreement": round(float((d32 == d16).mean()), 6),
            "identical_tag_sets": round(float((d32 == d16).all(axis=1).mean()), 4),
            "micro_f1_fp32": round(micro_f1(y, d32), 4),
            "micro_f1_fp16": round(micro_f1(y, d16), 4),
        }
        print("fp16 vs fp32 on the validation split:", json.dumps(fp16_info))
        if fp16_info["decision_agreement"] < args.fp16_min_agreement:
            raise ExportValidationError(
                f"fp16 tag decisions agree with fp32 on {fp16_info['decision_agreement']:.6f} of (item, tag) pairs, "
                f"below --fp16-min-agreement {args.fp16_min_agreement}"
            )
    if args.int8:
        tags8 = TagEngine(out, int8=True).tag_texts(val_texts)
        d8 = binarize([[t.tag for t in x] for x in tags8], labels)
        int8_info = {
            "items": len(val_texts),
            "decision_agreement": round(float((d32 == d8).mean()), 6),
            "identical_tag_sets": round(float((d32 == d8).all(axis=1).mean()), 4),
            "micro_f1_fp32": round(micro_f1(y, d32), 4),
            "micro_f1_int8": round(micro_f1(y, d8), 4),
        }
        print("int8 vs fp32 on the validation split:", json.dumps(int8_info))
    return write_manifest(out, **fields, metrics=metrics, int8=int8_info, fp16=fp16_info)


def write_fp16(fp32_path: Path, fp16_path: Path) -> None:
    """Half-precision weights and activations with float32 inputs/outputs (callers feed and read the
    same arrays as for fp32). ORT's converter keeps ops that have no fp16 kernel in fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    with warnings.catch_warnings():
        # It warns for every weight outside fp16's range that it clamps; the parity check decides.
        warnings.simplefilter("ignore", UserWarning)
        half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(fp16_path))


def run(args: argparse.Namespace) -> int:
    try:
        export(args)
    except ExportValidationError as exc:
        print(f"export failed validation: {exc}")
        return 1
    return 0
