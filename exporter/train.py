"""`tagger train`: fine-tune a pretrained encoder into a multi-label tagger within a time budget."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from exporter.base_models import DEFAULT_BASE, MULTILINGUAL_BASE, resolve_base_model
from exporter.candidates import fit_candidates
from exporter.data import split, write_rows
from exporter.lexical_fit import fit_slot_regression
from exporter.metrics import binarize, choose_thresholds, micro_f1, report, tune_thresholds
from exporter.model import Tagger, torch_outputs
from schemas.training import TrainingRow, facet_of, load_rows
from worker.candidates import CandidateExtractor
from worker.contract import (
    Decider,
    Decisions,
    RunMeta,
    TagRules,
    compose_text,
    default_taxonomy_version,
    fuse,
    pad_batch,
    sigmoid,
    single_valued_slots,
    slot_of,
)
from worker.lexical import LexicalChannel, SlotRegression
from worker.spans import IGNORE, _is_cjk, align, bio_labels, find_span, n_classes

log = logging.getLogger(__name__)
VAL_SALT = "val"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="training JSONL (id, title, description?, tags)")
    p.add_argument("--out", required=True, type=Path, help="run directory to write")
    p.add_argument(
        "--base-model",
        default="auto",
        help=f"short name or local HF dir; 'auto' (default): {DEFAULT_BASE} for Latin-script catalogs, "
        f"{MULTILINGUAL_BASE} when titles are noticeably CJK",
    )
    p.add_argument(
        "--epochs",
        type=float,
        default=12.0,
        help="most passes over the training split (default 12); training also stops at the time budget "
        "or when validation micro-F1 has not improved for --patience epochs",
    )
    p.add_argument("--patience", type=int, default=2, help="epochs without validation gain before stopping")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=18.0,
        help="wall-clock budget for the encoder (default 18: with indexing, calibration and saving the whole "
        "command stays near 20 minutes; measured 22-23 on a loaded machine at 20)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (exact reproduction of a run)")
    p.add_argument(
        "--min-tag-count",
        type=int,
        default=2,
        help="tags seen fewer times are not learned (default 2: the lexical channel and the extractor "
        "carry rare brands and models)",
    )
    p.add_argument(
        "--no-lexical",
        dest="lexical",
        action="store_false",
        help="train without the lexical channel (n-gram neighbour index; for ablations)",
    )
    p.add_argument(
        "--no-candidates",
        dest="candidates",
        action="store_false",
        help="train without the candidate-span extractor of the extractive facets (for ablations)",
    )
    p.add_argument("--seed", type=int, default=13, help="seed for init, shuffling and dropout (default 13)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="encoder learning rate (default 1e-4)")
    p.add_argument("--head-lr", type=float, default=3e-3, help="classifier head learning rate (default 3e-3)")
    p.add_argument("--max-seq-len", type=int, default=64, help="tokens per item (default 64)")
    p.add_argument("--val-percent", type=int, default=10, help="validation share by id hash (default 10)")
    p.add_argument(
        "--train-embeddings",
        action="store_true",
        help="also fine-tune the word embeddings (default: frozen; faster steps, less overfitting)",
    )
    p.add_argument(
        "--extract-facets",
        default="auto",
        help="facets the extractive (BIO span) head learns: 'auto' (every facet whose values occur "
        "verbatim in at least a third of their uses), 'none', or a comma list",
    )
    p.add_argument(
        "--span-loss-weight",
        type=float,
        default=0.1,
        help="weight of the span loss (default 0.1: at 1.0 it took encoder capacity from the classifier, "
        "validation category F1 0.897 vs 0.921)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument(
        "--taxonomy-version",
        default=None,
        help="taxonomy release the labels come from, carried by every tag event "
        "(default: a short hash of the sorted label set)",
    )


def build_labels(rows: Sequence[TrainingRow], min_count: int) -> list[str]:
    counts = Counter(t for r in rows for t in r.tags)
    return sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (facet_of(t), t))


def choose_extract_facets(rows: Sequence[TrainingRow], option: str, min_share: float = 1 / 3) -> list[str]:
    """'auto': facets whose values occur verbatim (find_span) in at least `min_share` of their uses
    (a third: OpenBG's brands and effects are spans in 40% of uses and the head catches those; the
    classifier and the lexical channel carry the rest, and in a single-valued slot the best score wins)."""
    if option == "none":
        return []
    if option != "auto":
        return [f.strip() for f in option.split(",") if f.strip()]
    hits: Counter[str] = Counter()
    uses: Counter[str] = Counter()
    for r in rows:
        text = compose_text(r.title, r.description)
        for tag in r.tags:
            facet, _, value = tag.partition(":")
            uses[facet] += 1
            hits[facet] += find_span(text, value) is not None
    return sorted(f for f in uses if uses[f] >= 20 and hits[f] / uses[f] >= min_share)


def _pad(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids, mask = pad_batch(ids, pad_id)
    return torch.from_numpy(input_ids), torch.from_numpy(mask)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of similar length: shuffle, sort within windows of 50 batches, shuffle the
    batches. Padding, not compute, dominated steps when a description sat beside short titles."""
    perm = torch.randperm(len(lengths), generator=gen)
    window = batch_size * 50
    batches: list[torch.Tensor] = []
    for start in range(0, len(perm), window):
        chunk = perm[start : start + window]
        chunk = chunk[torch.argsort(torch.tensor([lengths[i] for i in chunk.tolist()]), stable=True)]
        batches.extend(chunk.split(batch_size))
    order = torch.randperm(len(batches), generator=gen)
    return [batches[i] for i in order.tolist()]


def score(model: Tagger, ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Sigmoid tag scores [n, labels] and, with a span head, span logits per item [tokens, classes]."""
    logits, spans = torch_outputs(model, ids, pad_id, max_items=128)
    return sigmoid(logits), spans


def predict_tags(
    texts: Sequence[str],
    offsets: Sequence[Sequence[tuple[int, int]]],
    scores: np.ndarray,
    spans: list[np.ndarray] | None,
    decisions: Decisions,
    candidates: Sequence[Sequence[tuple[str, float]]] | None = None,
) -> tuple[list[list[str]], list[list[str]]]:
    """(classifier-only tags, classifier + extracted tags) per item: the serving rules
    (`worker.engine.TagEngine.decode`) applied to scores computed here (`candidates`: the
    candidate-span extractor's tags per item)."""
    rules = TagRules(decisions)
    classified, merged = [], []
    for i, row in enumerate(scores):
        found = candidates[i] if candidates is not None else ()
        cls, served = rules.tags(row, texts[i], offsets[i], spans[i] if spans is not None else None, found)
        classified.append([t for t, _ in cls])
        merged.append([t for t, _ in served])
    return classified, merged


def f1_of(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    return float(report(gold, pred)["micro"]["f1"])


def auto_base_model(rows: Sequence[TrainingRow], cjk_share: float = 0.05) -> str:
    """MiniLM (English WordPiece) for Latin-script catalogs; multilingual-e5-small when a noticeable
    share of the title characters is CJK (MiniLM turns most of them into [UNK])."""
    chars = "".join(r.title for r in rows[:2000])
    cjk = sum(1 for ch in chars if _is_cjk(ch))
    return MULTILINGUAL_BASE if chars and cjk / len(chars) >= cjk_share else DEFAULT_BASE


def out_of_sample_f1(
    scores: np.ndarray,
    y_val: np.ndarray,
    labels: list[str],
    single_slots: list[str],
    seed: int,
    facet: str | None = None,
) -> float:
    """Validation micro-F1 (in-vocabulary tags; of one facet's, given `facet`) of scores under the
    served decisions, thresholds tuned on one half of the split and scored on the other, both ways
    (per-facet thresholds: cheap)."""
    idx = np.random.default_rng(seed).permutation(len(y_val))
    halves = (idx[: len(idx) // 2], idx[len(idx) // 2 :])
    cols = np.array([facet is None or facet_of(label) == facet for label in labels])
    fs = []
    for a, b in (halves, halves[::-1]):
        th = tune_thresholds(scores[a], y_val[a], labels, "per_facet")
        pred = binarize([[t for t, _ in x] for x in Decider(labels, th, single_slots).decide_all(scores[b])], labels)
        fs.append(micro_f1(y_val[b][:, cols], pred[:, cols]))
    return round(float(np.mean(fs)), 4)


def check_slot_regressions(
    lexical: LexicalChannel,
    val_texts: list[str],
    y_val: np.ndarray,
    labels: list[str],
    single_slots: list[str],
    seed: int,
) -> LexicalChannel:
    """Keep a slot's regression only where it does not lower its facet's out-of-sample validation
    F1 (a regression fitted on a few dozen uses of a slot, OpenBG's colours, can do worse than the
    neighbour vote it is averaged with, while the category levels gain)."""
    slots = lexical.slots
    if slots is None:
        return lexical

    def scores_with(regressions: SlotRegression) -> np.ndarray:
        return dataclasses.replace(lexical, slots=regressions).scores(val_texts)

    current = scores_with(slots)  # recomputed only when a regression is dropped
    for k in reversed(range(len(slots.columns))):
        facet = facet_of(labels[int(slots.columns[k][0])])
        without = slots.without(k)
        scores_without = scores_with(without)
        f_with = out_of_sample_f1(current, y_val, labels, single_slots, seed, facet)
        f_without = out_of_sample_f1(scores_without, y_val, labels, single_slots, seed, facet)
        if f_with < f_without:
            log.info("slot regression of %s: validation F1 %.4f < %.4f without, dropped", facet, f_with, f_without)
            slots, current = without, scores_without
    return dataclasses.replace(lexical, slots=slots if slots.columns else None)


def calibrate(
    y_val: np.ndarray,
    labels: list[str],
    encoder_scores: np.ndarray,
    lexical_scores: np.ndarray | None,
    single_slots: list[str],
    seed: int,
) -> tuple[float, str, np.ndarray, dict[str, float], dict[str, float]]:
    """Choose the fusion weight, the threshold strategy and thresholds on validation.

    Each candidate weight is scored out of sample: thresholds tuned on one half of the validation
    split are scored on the other (both ways), with the serving decisions (single-valued slots,
    hierarchy). Returns (weight, strategy, thresholds, strategy comparison, micro-F1 per weight)."""
    weights = [1.0] if lexical_scores is None else [round(w, 2) for w in np.arange(0.0, 1.01, 0.1)]
    by_weight = {
        f"{w:.1f}": out_of_sample_f1(fuse(encoder_scores, lexical_scores, w), y_val, labels, single_slots, seed)
        for w in weights
    }
    # Ties go to the middle: both channels in, neither trusted alone.
    best = max(weights, key=lambda w: (by_weight[f"{w:.1f}"], -abs(w - 0.5)))
    strategy, thresholds, comparison = choose_thresholds(
        fuse(encoder_scores, lexical_scores, best), y_val, labels, seed=seed
    )
    return best, strategy, thresholds, comparison, by_weight


def train(args: argparse.Namespace) -> RunMeta:
    started = time.monotonic()
    budget_s = args.max_minutes * 60
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_rows(args.data)
    if loaded.errors:
        print(f"{args.data}: {loaded.summary}; first: {loaded.errors[0]}")
    train_rows, val_rows = split(loaded.rows, args.val_percent, salt=VAL_SALT)
    if not train_rows or not val_rows:
        raise SystemExit(f"need both training and validation rows; got {len(train_rows)} / {len(val_rows)}")
    labels = build_labels(train_rows, args.min_tag_count)
    if not labels:
        raise SystemExit(f"no tag occurs at least {args.min_tag_count} times; lower --min-tag-count")
    log.info("%d train / %d validation rows, %d labels", len(train_rows), len(val_rows), len(labels))
    base_name = auto_base_model(train_rows) if args.base_model == "auto" else args.base_model
    log.info("base model: %s", base_name)

    base_dir = resolve_base_model(base_name)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pad_id = tokenizer.pad_token_id or 0

    facets = choose_extract_facets(train_rows, args.extract_facets)
    log.info("extractive head facets: %s", facets or "none")
    single_slots = single_valued_slots([r.tags for r in train_rows])

    def encode(rows: Sequence[TrainingRow]) -> tuple[list[str], list[list[int]], list[list[tuple[int, int]]]]:
        texts = [compose_text(r.title, r.description) for r in rows]
        enc = tokenizer(texts, truncation=True, max_length=args.max_seq_len, return_offsets_mapping=True)
        return texts, enc["input_ids"], [[tuple(o) for o in offs] for offs in enc["offset_mapping"]]

    train_texts, train_ids, train_offsets = encode(train_rows)
    val_texts, val_ids, val_offsets = encode(val_rows)
    y_train_np = binarize([r.tags for r in train_rows], labels)
    y_val = binarize([r.tags for r in val_rows], labels)

    lexical = None
    lexical_val: np.ndarray | None = None
    if args.lexical:
        t = time.monotonic()
        index = {label: i for i, label in enumerate(labels)}
        slots = set(single_slots)
        lexical = LexicalChannel.build(
            train_texts,
            [[index[t] for t in r.tags if t in index] for r in train_rows],
            labels,
            np.array([slot_of(label) in slots for label in labels]),
        )
        # single-valued slots of the facets that are not extracted from the text (category levels);
        # extracted facets (a brand) are the candidate extractor's
        regressed = [slot for slot in single_slots if slot.partition("#")[0] not in facets]
        slot_model = fit_slot_regression(lexical.index.featurizer, train_texts, y_train_np, labels, regressed)
        lexical = dataclasses.replace(lexical, slots=slot_model)
        lexical = check_slot_regressions(lexical, val_texts, y_val, labels, single_slots, args.seed)
        lexical_val = lexical.scores(val_texts)
        log.info("lexical channel: %d features, built in %.0f s", len(lexical.index.featurizer), time.monotonic() - t)

    extractor: CandidateExtractor | None = None
    val_found: list[list[tuple[str, float]]] | None = None
    if args.candidates and facets:
        t = time.monotonic()
        slots = set(single_slots)
        extractor = fit_candidates(
            train_texts,
            [r.tags for r in train_rows],
            facets,
            [f"{f}#0" in slots for f in facets],
            val_texts,
            [r.tags for r in val_rows],
            seed=args.seed,
        )
        val_found = [extractor.extract(text) for text in val_texts]
        log.info("candidate-span extractor: %s, fitted in %.0f s", facets, time.monotonic() - t)

    train_bio = (
        [
            bio_labels(offs, align(text, r.tags, facets), facets)
            for text, offs, r in zip(train_texts, train_offsets, train_rows, strict=True)
        ]
        if facets
        else []
    )
    y_train = torch.tensor(y_train_np, dtype=torch.float32)
    model = Tagger.from_base(base_dir, len(labels), n_classes(facets) if facets else 0)
    prior = y_train.mean(0).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        model.head.bias.copy_(torch.log(prior / (1 - prior)))
    if not args.train_embeddings:
        model.encoder.get_input_embeddings().weight.requires_grad_(False)
    fitted = EncoderFit(model, pad_id, args, budget_s - (time.monotonic() - started))
    fitted.run(train_ids, train_bio, y_train, val_ids, y_val)

    val_scores, val_spans = score(model, val_ids, pad_id)
    weight, strategy, thresholds, comparison, by_weight = calibrate(
        y_val, labels, val_scores, lexical_val, single_slots, args.seed
    )
    decisions = Decisions(
        labels=labels,
        thresholds=[float(t) for t in thresholds],
        threshold_strategy=strategy,
        single_slots=single_slots,
        encoder_weight=weight,
        lexical=lexical is not None,
        extract_facets=facets,
        span_facets=facets,
        candidate_facets=extractor.facets if extractor is not None else [],
    )
    fused = fuse(val_scores, lexical_val, weight)
    gold = [r.tags for r in val_rows]

    def served_f1(d: Decisions) -> float:
        return f1_of(gold, predict_tags(val_texts, val_offsets, fused, val_spans, d, val_found)[1])

    val_cls, val_all_spans = predict_tags(val_texts, val_offsets, fused, val_spans, decisions, val_found)
    # The extractors are measured, not trusted: a span head that learned too little (a short budget,
    # few examples) proposes wrong values that win single-valued slots. Keep a facet's spans (first the
    # candidate extractor's, then the span head's) only where they do not lower validation micro-F1.
    for source in ("candidate_facets", "extract_facets"):
        for facet in list(getattr(decisions, source)):
            without = decisions.model_copy(update={source: [f for f in getattr(decisions, source) if f != facet]})
            f_with, f_without = served_f1(decisions), served_f1(without)
            if f_with < f_without:
                log.info("%s: %s spans lower validation micro-F1 (%.4f < %.4f)", source, facet, f_with, f_without)
                decisions = without
    val_merged = predict_tags(val_texts, val_offsets, fused, val_spans, decisions, val_found)[1]
    served = report(gold, val_merged)
    # What each component adds, on validation (micro-F1 over every gold tag, unknown tags count as
    # misses): the channels alone and fused (out of sample, see `calibrate`), then the decisions and
    # the extractor on top of the fused scores.
    plain = Decider(labels, thresholds, [])
    ablation = {f"fusion_weight_{k}": v for k, v in by_weight.items()} | {
        "fused_thresholds_only": f1_of(gold, [[t for t, _ in x] for x in plain.decide_all(fused)]),
        "fused_with_decisions": f1_of(gold, val_cls),
        "with_every_extractor": f1_of(gold, val_all_spans),
        "without_candidate_spans": served_f1(decisions.model_copy(update={"candidate_facets": []})),
        "without_span_head": served_f1(decisions.model_copy(update={"extract_facets": []})),
        "served": f1_of(gold, val_merged),
    }
    meta = RunMeta(
        base_model=base_name,
        decisions=decisions,
        max_seq_len=args.max_seq_len,
        pad_token_id=pad_id,
        seed=args.seed,
        steps=fitted.step,
        epochs_done=round(fitted.seen / len(train_ids), 3),
        train_rows=len(train_rows),
        val_rows=len(val_rows),
        bad_rows=len(loaded.errors),
        train_seconds=round(time.monotonic() - started, 1),
        validation=served,
        ablation={k: round(v, 4) for k, v in ablation.items()},
        threshold_comparison_micro_f1=comparison,
        taxonomy_version=args.taxonomy_version or default_taxonomy_version(labels),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out, meta)
    if lexical is not None:
        lexical.save(args.out)
    if extractor is not None:
        extractor.save(args.out)
    tokenizer.save_pretrained(args.out / "encoder")
    write_rows(args.out / "val.jsonl", val_rows)
    print(
        json.dumps(
            {
                "steps": meta.steps,
                "epochs_done": meta.epochs_done,
                "encoder_weight": weight,
                "threshold_strategy": strategy,
                "validation_micro": served["micro"],
                "ablation": meta.ablation,
            },
            ensure_ascii=False,
        )
    )
    return meta


class EncoderFit:
    """Fine-tunes the encoder and heads: epochs until the time budget or until validation micro-F1
    stops improving (`--patience` epochs); the best epoch's weights are kept."""

    def __init__(self, model: Tagger, pad_id: int, args: argparse.Namespace, budget_s: float) -> None:
        self.model, self.pad_id, self.args, self.budget_s = model, pad_id, args, budget_s
        self.step = 0
        self.seen = 0

    def run(
        self,
        train_ids: list[list[int]],
        train_bio: list[list[int]],
        y_train: torch.Tensor,
        val_ids: list[list[int]],
        y_val: np.ndarray,
    ) -> None:
        args, model = self.args, self.model
        started = time.monotonic()
        optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": args.lr},
                {"params": model.head.parameters(), "lr": args.head_lr},
                *([{"params": model.span_head.parameters(), "lr": args.head_lr}] if model.span_head else []),
            ],
            weight_decay=0.01,
        )
        base_lrs = [g["lr"] for g in optimizer.param_groups]
        steps_per_epoch = math.ceil(len(train_ids) / args.batch_size)
        total_steps = max(1, int(args.epochs * steps_per_epoch))
        if args.max_steps:
            total_steps = min(total_steps, args.max_steps)
        warmup = max(1, min(total_steps // 20, steps_per_epoch))
        loss_fn = torch.nn.BCEWithLogitsLoss()
        span_loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
        gen = torch.Generator().manual_seed(args.seed)
        lengths = [len(x) for x in train_ids]
        reserve = 0.1 * self.budget_s  # validation scoring, calibration, saving
        best_f1, best_state, stale = -1.0, None, 0
        last_log = window_started = time.monotonic()
        window_step = 0
        while self.step < total_steps:
            model.train()
            for batch in length_grouped_batches(lengths, args.batch_size, gen):
                if self.step >= total_steps:
                    break
                lr_scale = min(
                    (self.step + 1) / warmup, max(0.0, (total_steps - self.step) / max(1, total_steps - warmup))
                )
                for g, base in zip(optimizer.param_groups, base_lrs, strict=True):
                    g["lr"] = base * lr_scale
                rows = batch.tolist()
                input_ids, mask = _pad([train_ids[i] for i in rows], self.pad_id)
                logits, span_logits = model.forward_all(input_ids, mask)
                loss = loss_fn(logits, y_train[batch])
                if span_logits is not None:
                    target = torch.full(input_ids.shape, IGNORE, dtype=torch.long)
                    for row, i in enumerate(rows):
                        target[row, : len(train_bio[i])] = torch.tensor(train_bio[i])
                    loss = loss + args.span_loss_weight * span_loss_fn(
                        span_logits.reshape(-1, span_logits.shape[-1]), target.reshape(-1)
                    )
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                self.step += 1
                self.seen += len(batch)
                elapsed = time.monotonic() - started
                if not args.max_steps and (self.step == 20 or self.step % 200 == 0):
                    # Fit the schedule to the budget from the recent step rate (re-checked as load
                    # changes), so the LR decays to zero when time runs out instead of being cut.
                    per_step = (time.monotonic() - window_started) / (self.step - window_step)
                    window_started, window_step = time.monotonic(), self.step
                    affordable = int((self.budget_s - reserve - elapsed) / per_step) + self.step
                    planned = min(max(1, int(args.epochs * steps_per_epoch)), max(self.step + 1, affordable))
                    if planned != total_steps:
                        log.info("budget: %d steps planned (%.2f s/step)", planned, per_step)
                        total_steps = planned
                if time.monotonic() - last_log > 15 or self.step == total_steps:
                    eta = (total_steps - self.step) * elapsed / self.step
                    print(
                        f"step {self.step}/{total_steps} epoch {self.seen / len(train_ids):.2f} loss {loss.item():.4f} "
                        f"{self.seen / elapsed:.0f} items/s ETA {eta / 60:.1f} min",
                        flush=True,
                    )
                    last_log = time.monotonic()
                if elapsed > self.budget_s - reserve:
                    log.warning("time budget reached at step %d", self.step)
                    total_steps = self.step
                    break
            if args.max_steps:
                continue
            # End of an epoch (or of the budget): keep the best weights seen so far.
            val_scores, _ = score(model, val_ids, self.pad_id)
            f1 = max(micro_f1(y_val, val_scores >= t) for t in (0.2, 0.3, 0.4, 0.5))
            log.info("epoch %.2f: validation micro-F1 %.4f (best %.4f)", self.seen / len(train_ids), f1, best_f1)
            if f1 > best_f1 + 1e-4:
                best_f1, stale = f1, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= args.patience:
                    log.info("validation micro-F1 stopped improving: stopping at step %d", self.step)
                    break
        if best_state is not None:
            model.load_state_dict(best_state)


def run(args: argparse.Namespace) -> int:
    train(args)
    return 0
