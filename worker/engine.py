"""Inference engine: text -> fast tokenizer -> ONNX Runtime (encoder channel) + n-gram lexical
channel -> calibrated fusion -> decisions (thresholds, single-valued slots, hierarchy) + extracted
spans -> tags.

Used by the streaming worker and by offline `tagger predict`, so both tag identically. No torch.
Batches are bucketed by token length so one long title does not pad a whole batch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from worker.artifact import ArtifactError, load_manifest
from worker.candidates import CANDIDATE_WEIGHTS_FILE, CANDIDATES_FILE, CandidateExtractor
from worker.contract import RUN_COST_TOKENS, Manifest, TagRules, fuse, run_bucketed, sigmoid
from worker.evidence import EvidenceSpan, ExplainBasis
from worker.lexical import LexicalChannel, Trace

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
GRAPHS = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
EXPORT_FLAG = {"int8": "--int8", "fp16": "--fp16"}


class EngineError(Exception):
    """The engine cannot start or run."""


class ProviderUnavailableError(EngineError):
    """The requested execution provider is not available on this machine."""


class Tag(NamedTuple):
    """One tag of one item. A named tuple (immutable, `_replace` to change): a cache hit builds
    every tag of its entry again, and a frozen dataclass took ~3x as long to construct."""

    tag: str
    score: float
    evidence: tuple[EvidenceSpan, ...] = ()  # spans of the original title/description (worker/evidence.py)
    source: str | None = None  # "human": a reviewer's override (worker/overrides.py); None: the model


@dataclass(frozen=True)
class Encoded:
    """One tokenized text: ids (truncated, unpadded) and character offsets for span extraction."""

    text: str
    ids: np.ndarray
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Outputs:
    scores: np.ndarray  # sigmoid tag scores [n, labels]
    spans: list[np.ndarray] | None  # span logits per item [tokens, classes], when the model extracts
    trace: Trace | None = None  # what the lexical channel looked at, when the engine keeps it (evidence)


class TagEngine:
    """Loads a model artifact and tags texts. Create it in the process (thread) that uses it."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        provider: str = "cpu",
        allow_cpu_fallback: bool = False,
        int8: bool = False,
        precision: str | None = None,
        io_binding: bool | None = None,
        intra_op_threads: int = 0,
        intra_op_spinning: bool = False,
        verify: bool = True,
        max_items: int = 64,
        max_tokens: int = 8192,
        extract: bool = True,
        trace_lexical: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir, verify=verify)
        # `precision` names the graph; the older `int8` switch is kept for callers that use it.
        self.precision = precision or ("int8" if int8 else "fp32")
        if self.precision not in GRAPHS:
            raise EngineError(f"unknown precision {self.precision!r}; choose one of {sorted(GRAPHS)}")
        onnx_name = GRAPHS[self.precision]
        if onnx_name not in self.manifest.files:
            flag = EXPORT_FLAG.get(self.precision, "")
            raise ArtifactError(f"{self.model_dir}: no {onnx_name} (export with {flag} to serve {self.precision})")
        self.max_items, self.max_tokens = max_items, max_tokens
        self.int8 = self.precision == "int8"
        decisions = self.manifest.decisions
        self.labels = decisions.labels
        self.encoder_weight = decisions.encoder_weight
        self.lexical = LexicalChannel.load(self.model_dir, self.manifest.files) if decisions.lexical else None
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.manifest.max_seq_len)
        self.pad_id = self.manifest.pad_token_id
        self.session = self._session(
            self.model_dir / onnx_name, provider, allow_cpu_fallback, intra_op_threads, intra_op_spinning
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.provider = self.session.get_providers()[0]
        # With CUDA, binding has ORT copy the inputs to the device up front and allocate the outputs
        # there, copied back once per run, instead of staging through its own per-run host buffers
        # (ORT's advice for GPU serving); on CPU it buys nothing, so it is off there by default.
        self.io_binding = self.provider == PROVIDERS["cuda"] if io_binding is None else io_binding
        # One graph run at a time: its intra-op threads already use every core (or the GPU), and
        # the worker's batch threads overlap everything else (lexical channel, evidence, publishing).
        self._graph_lock = threading.Lock()
        self._waited = threading.local()  # per batch thread: seconds spent waiting for the lock
        facets = decisions.extract_facets
        self.extract_facets = facets if extract and "span_logits" in self.output_names else []
        missing = {CANDIDATES_FILE, CANDIDATE_WEIGHTS_FILE} - set(self.manifest.files)
        if decisions.candidate_facets and missing:
            raise ArtifactError(f"{self.model_dir}: its decisions serve candidate spans, its manifest lacks {missing}")
        self.candidates = CandidateExtractor.load(self.model_dir) if extract and decisions.candidate_facets else None
        self.rules = TagRules(decisions, extract=bool(self.extract_facets) or self.candidates is not None)
        self.decider = self.rules.decider
        self.trace_lexical = trace_lexical and self.lexical is not None  # evidence for classified tags

    @cached_property
    def explain_basis(self) -> ExplainBasis:
        """Labels, thresholds and the lexical channel, for evidence and the review decision."""
        d = self.manifest.decisions
        return ExplainBasis.build(d.labels, d.thresholds, d.single_slots, self.lexical)

    @property
    def model_version(self) -> str:
        """Cache keys and tag events carry it: int8/fp16 tags can differ from fp32 on a few items."""
        return self.manifest.model_version + ("" if self.precision == "fp32" else f"-{self.precision}")

    @property
    def taxonomy_version(self) -> str:
        return self.manifest.taxonomy

    @staticmethod
    def _session(path: Path, provider: str, fallback: bool, threads: int, spinning: bool) -> ort.InferenceSession:
        if provider not in PROVIDERS:
            raise EngineError(f"unknown provider {provider!r}; choose one of {sorted(PROVIDERS)}")
        wanted = PROVIDERS[provider]
        available = ort.get_available_providers()
        providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        # Spinning threads keep a core busy after each run; the worker's other threads need it.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
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

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Tokenize (truncated, unpadded), keeping offsets for span extraction."""
        return [
            Encoded(t, np.asarray(e.ids, dtype=np.int64), e.offsets)
            for t, e in zip(texts, self.tokenizer.encode_batch(list(texts)), strict=True)
        ]

    def _run(self, input_ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        feed = {k: v for k, v in feed.items() if k in self.input_names}
        asked = time.perf_counter()
        with self._graph_lock:
            self._waited.s = getattr(self._waited, "s", 0.0) + time.perf_counter() - asked
            outputs = self._run_bound(feed) if self.io_binding else self.session.run(self.output_names, feed)
        res = dict(zip(self.output_names, outputs, strict=True))
        return res["logits"], res.get("span_logits") if self.extract_facets else None

    def _run_bound(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        device = "cuda" if self.provider == PROVIDERS["cuda"] else "cpu"
        for name in self.output_names:
            binding.bind_output(name, device)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def take_graph_wait(self) -> float:
        """Seconds the calling thread waited for another thread's graph run since its last call."""
        waited, self._waited.s = getattr(self._waited, "s", 0.0), 0.0
        return float(waited)

    def run(self, items: list[Encoded]) -> Outputs:
        """Run the encoder in length buckets (each within max_items and max_tokens of padding), the
        lexical channel over the texts, and fuse the two."""
        logits, spans = run_bucketed(
            [x.ids for x in items],
            self.pad_id,
            len(self.labels),
            self._run,
            self.max_items,
            self.max_tokens,
            RUN_COST_TOKENS["cuda" if self.provider == PROVIDERS["cuda"] else "cpu"],
        )
        if self.extract_facets and spans is None:
            spans = [np.zeros((0, 1), dtype=np.float32)] * len(items)
        trace = Trace() if self.trace_lexical else None
        lexical = self.lexical.scores([x.text for x in items], trace=trace) if self.lexical is not None else None
        return Outputs(fuse(sigmoid(logits), lexical, self.encoder_weight), spans, trace)

    def scores(self, items: list[Encoded]) -> np.ndarray:
        return self.run(items).scores if items else np.zeros((0, len(self.labels)), dtype=np.float32)

    def decode(self, items: list[Encoded], outputs: Outputs) -> list[list[Tag]]:
        """Tags over threshold plus extracted spans (one score per tag), highest score first."""
        result = []
        for i, row in enumerate(outputs.scores):
            spans = outputs.spans[i] if outputs.spans is not None else None
            found = self.candidates.extract(items[i].text) if self.candidates is not None else ()
            _, served = self.rules.tags(row, items[i].text, items[i].offsets, spans, found)
            result.append([Tag(t, round(s, 4)) for t, s in served])
        return result

    def tag_texts(self, texts: Sequence[str]) -> list[list[Tag]]:
        if not texts:
            return []
        items = self.encode(texts)
        return self.decode(items, self.run(items))
