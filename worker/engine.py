"""Inference engine: text -> fast tokenizer -> ONNX Runtime -> sigmoid -> thresholds -> tags.

Used by the streaming worker and by offline `tagger predict`, so both tag identically. No torch.
Batches are bucketed by token length so one long title does not pad a whole batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from worker.artifact import ArtifactError, Manifest, load_manifest

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class EngineError(Exception):
    """The engine cannot start or run."""


class ProviderUnavailableError(EngineError):
    """The requested execution provider is not available on this machine."""


@dataclass(frozen=True)
class Tag:
    tag: str
    score: float


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


class TagEngine:
    """Loads a model artifact and tags texts. Create it in the process (thread) that uses it."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        provider: str = "cpu",
        allow_cpu_fallback: bool = False,
        int8: bool = False,
        intra_op_threads: int = 0,
        verify: bool = True,
        max_items: int = 64,
        max_tokens: int = 8192,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir, verify=verify)
        onnx_name = "model.int8.onnx" if int8 else "model.onnx"
        if onnx_name not in self.manifest.files:
            raise ArtifactError(f"{self.model_dir}: no {onnx_name} (export with --int8 to serve int8)")
        self.max_items, self.max_tokens, self.int8 = max_items, max_tokens, int8
        self.labels = self.manifest.labels
        self.thresholds = np.asarray(self.manifest.thresholds, dtype=np.float32)
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.manifest.max_seq_len)
        self.pad_id = int(getattr(self.manifest, "pad_token_id", 0) or 0)
        self.session = self._session(self.model_dir / onnx_name, provider, allow_cpu_fallback, intra_op_threads)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.provider = self.session.get_providers()[0]

    @property
    def model_version(self) -> str:
        return self.manifest.model_version + ("-int8" if self.int8 else "")

    @staticmethod
    def _session(path: Path, provider: str, fallback: bool, threads: int) -> ort.InferenceSession:
        if provider not in PROVIDERS:
            raise EngineError(f"unknown provider {provider!r}; choose one of {sorted(PROVIDERS)}")
        wanted = PROVIDERS[provider]
        available = ort.get_available_providers()
        providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.log_severity_level = 3  # ORT logs a missing CUDA as an error itself; we raise our own
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise EngineError(f"cannot load {path}: {exc}") from exc
        # ORT silently falls back to CPU when CUDA cannot start: check what it actually uses.
        if session.get_providers()[0] != wanted:
            msg = (
                f"execution provider {wanted} is not usable here (available: {available}, "
                f"session got {session.get_providers()})"
            )
            if not fallback:
                raise ProviderUnavailableError(msg + "; set allow_cpu_fallback to run on CPU")
            log.warning("%s; falling back to CPU as configured", msg)
        return session

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids per text (truncated, unpadded)."""
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tokenizer.encode_batch(list(texts))]

    def _run(self, ids: list[np.ndarray]) -> dict[str, np.ndarray]:
        longest = max(len(x) for x in ids)
        input_ids = np.full((len(ids), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), longest), dtype=np.int64)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        outputs = self.session.run(self.output_names, {k: v for k, v in feed.items() if k in self.input_names})
        return dict(zip(self.output_names, outputs, strict=True))

    def scores(self, ids: list[np.ndarray]) -> np.ndarray:
        """Sigmoid scores [n, labels] for tokenized items, run in length buckets."""
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        if not ids:
            return out
        for group in bucket([len(x) for x in ids], self.max_items, self.max_tokens):
            logits = self._run([ids[i] for i in group])["logits"]
            out[group] = 1.0 / (1.0 + np.exp(-logits.astype(np.float32)))
        return out

    def decode(self, scores: np.ndarray) -> list[list[Tag]]:
        """Tags over threshold per row, highest score first."""
        result = []
        for row in scores:
            hits = np.nonzero(row >= self.thresholds)[0]
            hits = hits[np.argsort(-row[hits], kind="stable")]
            result.append([Tag(self.labels[i], round(float(row[i]), 4)) for i in hits])
        return result

    def tag_texts(self, texts: Sequence[str]) -> list[list[Tag]]:
        return self.decode(self.scores(self.encode(texts)))
