"""The model contract shared by trainer, exporter, offline `predict` and the worker: how a product
becomes model text, how texts are bucketed and padded, and how scores become tags. Pure (numpy only):
importing it loads neither torch nor ONNX Runtime."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.training import facet_of
from worker.spans import extract, known_spellings, merge

MANIFEST_FORMAT = 2


def compose_text(title: str, description: str | None = None) -> str:
    """The model's input text; must match what the trainer used."""
    title = " ".join(title.split())
    if description and description.strip():
        return f"{title} . {' '.join(description.split())}"
    return title


# What one more graph run costs, in padded tokens: on CPU a run of MiniLM costs ~2 ms plus ~0.06 ms
# per padded token (bench: 1 x 8 tokens 2.4 ms, 32 x 128 tokens 297 ms), so ~32 tokens; on a GPU a
# run's fixed cost dwarfs its tokens (an estimate: not measured here).
RUN_COST_TOKENS = {"cpu": 32, "cuda": 2048}


def bucket(lengths: Sequence[int], max_items: int, max_tokens: int, run_cost_tokens: int = 32) -> list[list[int]]:
    """Split item indices into sub-batches of similar length, each within max_items and max_tokens
    counted as padded tokens (items x longest), at the least cost: padded tokens plus
    `run_cost_tokens` per run. The items sorted by length are cut into runs by dynamic programming,
    so a batch mixing short titles with long descriptions no longer pads every title to the longest."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    cost = [0] + [0] * n  # cost[e]: least cost of the first e sorted items
    cut = [0] * (n + 1)  # cut[e]: where the last run of that solution starts
    for end in range(1, n + 1):
        longest, best = sorted_lengths[end - 1], -1
        for start in range(end - 1, max(-1, end - 1 - max_items), -1):
            size = end - start
            if size > 1 and size * longest > max_tokens:
                break
            c = cost[start] + run_cost_tokens + size * longest
            if best < 0 or c <= best:  # on a tie, the longer run (fewer runs)
                best, cut[end] = c, start
        cost[end] = best
    groups: list[list[int]] = []
    end = n
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def pad_batch(ids: Sequence[Sequence[int] | np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 [n, longest], right-padded with `pad_id`."""
    longest = max(len(x) for x in ids)
    input_ids = np.full((len(ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return input_ids, mask


BatchRun = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def run_bucketed(
    ids: Sequence[Sequence[int] | np.ndarray],
    pad_id: int,
    n_labels: int,
    run: BatchRun,
    max_items: int = 64,
    max_tokens: int = 1 << 30,
    run_cost_tokens: int = RUN_COST_TOKENS["cpu"],
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Run a model (`run(input_ids, attention_mask) -> (tag logits, span logits | None)`) over
    length buckets and put the outputs back in input order: tag logits [n, labels] and, when the
    model has a span head, each item's span logits [its tokens, classes] (padding cut). One
    definition for ONNX Runtime serving, the export check and PyTorch scoring in training."""
    logits = np.zeros((len(ids), n_labels), dtype=np.float32)
    spans: list[np.ndarray] | None = None
    for group in bucket([len(x) for x in ids], max_items, max_tokens, run_cost_tokens):
        input_ids, mask = pad_batch([ids[i] for i in group], pad_id)
        out, span_out = run(input_ids, mask)
        logits[group] = out
        if span_out is not None:
            spans = spans if spans is not None else [np.zeros(0)] * len(ids)
            for row, i in enumerate(group):
                spans[i] = span_out[row, : len(ids[i])]
    return logits, spans


# --- how scores become tags -------------------------------------------------------------------

HIERARCHY_SEPARATOR = " > "


def slot_of(label: str) -> str:
    """A facet and a depth in its value hierarchy: `category:A > B` -> `category#1`. Each level of a
    category path is a slot of its own, so a three-level path is three single-valued slots."""
    return f"{facet_of(label)}#{label.partition(':')[2].count(HIERARCHY_SEPARATOR)}"


def parent_of(label: str) -> str | None:
    facet, _, value = label.partition(":")
    head, sep, _ = value.rpartition(HIERARCHY_SEPARATOR)
    return f"{facet}:{head}" if sep else None


def single_valued_slots(tag_lists: Sequence[Sequence[str]], max_multi_share: float = 0.05) -> list[str]:
    """Slots that hold at most one value in all but `max_multi_share` of the items that use them
    (a category level, a brand): for those only the best candidate is kept."""
    uses: dict[str, int] = {}
    multi: dict[str, int] = {}
    for tags in tag_lists:
        per_slot: dict[str, int] = {}
        for t in tags:
            per_slot[slot_of(t)] = per_slot.get(slot_of(t), 0) + 1
        for s, n in per_slot.items():
            uses[s] = uses.get(s, 0) + 1
            multi[s] = multi.get(s, 0) + (n > 1)
    return sorted(s for s in uses if multi[s] <= max_multi_share * uses[s])


class Decider:
    """Scores -> tags, one rule set for training, export checks, `predict` and the worker:

    - a label is a candidate when its score reaches its threshold;
    - in a single-valued slot only the best candidate stays;
    - hierarchies stay consistent, top-down: below a chosen parent only its children compete; a child
      chosen without a chosen parent brings its ancestors (a child implies its parents).
    """

    def __init__(
        self, labels: Sequence[str], thresholds: Sequence[float] | np.ndarray, single_slots: Sequence[str]
    ) -> None:
        self.labels = list(labels)
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        index = {label: i for i, label in enumerate(self.labels)}
        self.parent = [index.get(p, -1) if (p := parent_of(label)) else -1 for label in self.labels]
        slots: dict[str, list[int]] = {}
        for i, label in enumerate(self.labels):
            slots.setdefault(slot_of(label), []).append(i)
        single = set(single_slots)
        # Parents before children: slots sorted by depth.
        self.slots = [
            (name, np.asarray(cols), name in single)
            for name, cols in sorted(slots.items(), key=lambda kv: (int(kv[0].rpartition("#")[2]), kv[0]))
        ]

    def decide(self, row: np.ndarray) -> list[tuple[str, float]]:
        """One item's tags with their scores, highest score first."""
        passed = row >= self.thresholds
        chosen: set[int] = set()
        chosen_in: dict[str, list[int]] = {}
        for name, cols, single in self.slots:
            cand = cols[passed[cols]]
            if single and len(cand):
                facet, _, depth = name.rpartition("#")
                above = chosen_in.get(f"{facet}#{int(depth) - 1}")
                if above:  # only children of the chosen parent compete; none -> the path stops here
                    cand = cand[np.isin([self.parent[j] for j in cand], above)]
                if len(cand):
                    cand = cand[[int(np.argmax(row[cand]))]]
            for j in cand.tolist():
                p = j
                while p >= 0 and p not in chosen:  # a child implies its parents
                    chosen.add(p)
                    chosen_in.setdefault(slot_of(self.labels[p]), []).append(p)
                    p = self.parent[p]
        return sorted(((self.labels[j], float(row[j])) for j in chosen), key=lambda t: -t[1])

    def decide_all(self, scores: np.ndarray) -> list[list[tuple[str, float]]]:
        return [self.decide(row) for row in scores]


class TagRules:
    """One item's served tags, for `predict`, the worker and the trainer's checks alike: the
    `Decider` over the fused scores, then the extracted spans of the served facets merged in
    (decoded with the span head's layout), one value per single-valued slot."""

    def __init__(self, decisions: Decisions, extract: bool = True) -> None:
        self.decider = decisions.decider()
        self.known = known_spellings(decisions.labels)
        self.labels = frozenset(decisions.labels)
        self.single = set(decisions.single_slots)
        self.head_facets = decisions.head_facets
        self.served = set(decisions.extract_facets) if extract else set()
        self.candidate_facets = set(decisions.candidate_facets) if extract else set()

    def tags(
        self,
        row: np.ndarray,
        text: str,
        offsets: Sequence[tuple[int, int]],
        span_logits: np.ndarray | None,
        candidates: Sequence[tuple[str, float]] = (),
    ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """(classified tags, served tags), each highest score first. `candidates`: the candidate-span
        extractor's tags for this text (only those of `candidate_facets` are served)."""
        classified = self.decider.decide(row)
        spans = [t for t in candidates if facet_of(t[0]) in self.candidate_facets]
        if span_logits is not None and self.served:
            spans += [t for t in extract(text, offsets, span_logits, self.head_facets) if facet_of(t[0]) in self.served]
        if not spans:
            return classified, enforce_single(classified, self.single)
        return classified, enforce_single(merge(classified, spans, self.known, self.labels), self.single)


def enforce_single(tags: Sequence[tuple[str, float]], single_slots: set[str]) -> list[tuple[str, float]]:
    """After extracted spans join the classifier's tags (sorted by score), a single-valued slot keeps
    only its best-scoring value."""
    seen: set[str] = set()
    out = []
    for tag, score in tags:
        slot = slot_of(tag)
        if slot in single_slots:
            if slot in seen:
                continue
            seen.add(slot)
        out.append((tag, score))
    return out


def fuse(encoder_scores: np.ndarray, lexical_scores: np.ndarray | None, encoder_weight: float) -> np.ndarray:
    """Calibrated fusion of the two channels' probabilities (the weight is chosen on validation)."""
    if lexical_scores is None:
        return encoder_scores
    return (encoder_weight * encoder_scores + (1.0 - encoder_weight) * lexical_scores).astype(np.float32)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-z.astype(np.float32)))).astype(np.float32)


# --- what a run and an artifact record ----------------------------------------------------------


def default_taxonomy_version(labels: Sequence[str]) -> str:
    """A short hash of the sorted label set: the taxonomy version when training was not given one.
    Same labels -> same version, whatever their order."""
    return "labels-" + hashlib.sha256("\n".join(sorted(labels)).encode()).hexdigest()[:12]


class Decisions(BaseModel):
    """Everything that turns model outputs into tags, recorded by training and read by serving."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    labels: list[str]
    thresholds: list[float]
    threshold_strategy: str = Field(description="per_facet | per_tag, measured on validation halves")
    single_slots: list[str] = Field(default_factory=list, description="slots where only the best candidate stays")
    encoder_weight: float = Field(1.0, ge=0.0, le=1.0, description="fusion weight of the encoder channel")
    lexical: bool = Field(False, description="whether the lexical channel is part of the model")
    extract_facets: list[str] = Field(default_factory=list, description="facets whose extracted spans are served")
    span_facets: list[str] = Field(
        default_factory=list,
        description="the span head's facets in class order (its layout; a superset of extract_facets)",
    )
    candidate_facets: list[str] = Field(
        default_factory=list,
        description="facets whose candidate-span extractor (`worker.candidates`) is served",
    )

    @property
    def head_facets(self) -> list[str]:
        """The span head's class layout (runs written before `span_facets` existed: extract_facets)."""
        return self.span_facets or self.extract_facets

    @model_validator(mode="after")
    def _consistent(self) -> Decisions:
        if len(self.labels) != len(self.thresholds):
            raise ValueError(f"{len(self.labels)} labels but {len(self.thresholds)} thresholds")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("duplicate labels")
        return self

    def decider(self) -> Decider:
        return Decider(self.labels, self.thresholds, self.single_slots)


class RunMeta(BaseModel):
    """`tagger.json` in a training run directory: what `tagger export` needs and what training measured."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    base_model: str
    decisions: Decisions
    max_seq_len: int
    pad_token_id: int
    seed: int
    steps: int
    epochs_done: float
    train_rows: int
    val_rows: int
    bad_rows: int
    train_seconds: float
    validation: dict[str, Any] = Field(description="validation report of the served recipe")
    ablation: dict[str, float] = Field(default_factory=dict, description="validation micro-F1 per component mix")
    threshold_comparison_micro_f1: dict[str, float] = Field(default_factory=dict)
    taxonomy_version: str | None = Field(
        None, description="`tagger train --taxonomy-version`, default a hash of the label set (None: older runs)"
    )


class Manifest(BaseModel):
    """`manifest.json` of a model artifact: every field typed; unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    format_version: int = MANIFEST_FORMAT
    model_version: str = Field(description="Content hash of every artifact file and the decision rules.")
    base_model: str
    decisions: Decisions
    opset: int
    max_seq_len: int
    pad_token_id: int = 0
    text_fields: list[str] = ["title", "description"]
    files: dict[str, str] = Field(description="relative path -> sha256 of every artifact file.")
    metrics: dict[str, Any] = {}
    int8: dict[str, Any] | None = None
    fp16: dict[str, Any] | None = Field(None, description="model.fp16.onnx vs fp32 on validation, when exported")
    training: dict[str, Any] = {}
    taxonomy_version: str | None = Field(
        None, description="Taxonomy release the labels come from (None: exported before it was recorded)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.format_version != MANIFEST_FORMAT:
            raise ValueError(f"format_version {self.format_version} is not {MANIFEST_FORMAT}: re-export the model")
        if "model.onnx" not in self.files:
            raise ValueError("files lacks model.onnx")
        return self

    @property
    def labels(self) -> list[str]:
        return self.decisions.labels

    @property
    def taxonomy(self) -> str:
        """The recorded taxonomy version, or the label-set hash for artifacts exported before it existed."""
        return self.taxonomy_version or default_taxonomy_version(self.labels)
