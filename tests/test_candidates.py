"""The candidate-span extractor and the lexical slot regressions: trained by the exporter, served
with numpy, identical after a save/load round trip; spans index the original text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from exporter.candidates import fit_candidates
from exporter.lexical_fit import fit_slot_regression
from exporter.metrics import binarize
from tests.model_factory import make_rows
from worker.candidates import CandidateExtractor
from worker.lexical import LexicalChannel

CJK_BRANDS = ["华为", "小米", "欧莱雅", "百雀羚"]
CJK_PRODUCTS = ["智能手机", "保湿面霜", "洗发水", "蓝牙耳机"]


def cjk_rows(n: int) -> tuple[list[str], list[list[str]]]:
    texts, tags = [], []
    for i in range(n):
        brand, product = CJK_BRANDS[i % 4], CJK_PRODUCTS[(i // 4) % 4]
        texts.append(f"【新品】{brand}{product} {i % 5 + 1}件装")
        tags.append([f"品牌:{brand}", f"产品:{product}"])
    return texts, tags


def latin_rows(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    rows = make_rows(n, seed=seed)
    return [str(r["title"]) for r in rows], [list(r["tags"]) for r in rows]  # type: ignore[call-overload]


def test_latin_brands_are_found_as_spans_of_the_original_text(tmp_path: Path) -> None:
    texts, tags = latin_rows(300, seed=0)
    val_texts, val_tags = latin_rows(60, seed=1)
    ex = fit_candidates(texts, tags, ["brand"], [True], val_texts, val_tags)
    test_texts, test_tags = latin_rows(40, seed=2)
    hits = 0
    for text, gold in zip(test_texts, test_tags, strict=True):
        spans = ex.spans(text)
        assert len(spans) <= 1  # a single-valued facet keeps its best span
        for facet, start, end, score in spans:
            assert facet == "brand" and 0.0 <= score <= 1.0
            assert text[start:end] == text.split()[0]  # the synthetic brand leads the title
        hits += [f"brand:{text.split()[0]}"] == [t for t, _ in ex.extract(text)] and f"brand:{text.split()[0]}" in gold
    assert hits >= 36  # brands the model never saw in that title still come out

    ex.save(tmp_path)
    loaded = CandidateExtractor.load(tmp_path)
    assert [loaded.spans(t) for t in test_texts] == [ex.spans(t) for t in test_texts]


def test_cjk_spans_index_the_original_text_inside_unsegmented_titles() -> None:
    texts, tags = cjk_rows(240)
    val_texts, val_tags = cjk_rows(40)
    ex = fit_candidates(texts, tags, ["品牌", "产品"], [True, True], val_texts, val_tags)
    text = "【新品】小米保湿面霜 2件装"
    found = {facet: text[s:e] for facet, s, e, _ in ex.spans(text)}
    assert found == {"品牌": "小米", "产品": "保湿面霜"}
    assert sorted(t for t, _ in ex.extract(text)) == ["产品:保湿面霜", "品牌:小米"]


def test_slot_regression_round_trips_and_scores_its_slot(tmp_path: Path) -> None:
    rows = make_rows(200, seed=0)
    texts = [str(r["title"]) for r in rows]
    labels = sorted({t for r in rows for t in r["tags"]})  # type: ignore[attr-defined]
    tag_ids = [[labels.index(t) for t in r["tags"]] for r in rows]  # type: ignore[attr-defined]
    single = np.ones(len(labels), dtype=bool)
    channel = LexicalChannel.build(texts, tag_ids, labels, single)
    y = binarize([list(r["tags"]) for r in rows], labels)  # type: ignore[call-overload]
    slots = fit_slot_regression(channel.index.featurizer, texts, y, labels, ["category#0"])
    assert slots is not None
    categories = [j for j, label in enumerate(labels) if label.startswith("category:")]
    assert sorted(slots.covered.tolist()) == categories
    with_slots = dataclasses.replace(channel, slots=slots)
    probe = ["Nike black laptop", "Puma red sandals", "Sony silk saree"]
    scores = with_slots.scores(probe)
    # the slot's probabilities (averaged with the neighbour vote) pick the right category
    picked = [labels[categories[int(np.argmax(row[categories]))]] for row in scores]
    assert picked == ["category:Electronics", "category:Footwear", "category:Clothing"]
    with_slots.save(tmp_path)
    np.testing.assert_allclose(LexicalChannel.load(tmp_path).scores(probe), scores, atol=1e-6)


def test_a_slot_regression_that_lowers_its_facets_validation_f1_is_dropped() -> None:
    from exporter.train import check_slot_regressions

    rows, val_rows = make_rows(200, seed=0), make_rows(120, seed=5)
    texts, val_texts = [str(r["title"]) for r in rows], [str(r["title"]) for r in val_rows]
    labels = sorted({t for r in rows for t in r["tags"]})  # type: ignore[attr-defined]
    channel = LexicalChannel.build(
        texts,
        [[labels.index(t) for t in r["tags"]] for r in rows],
        labels,
        np.ones(len(labels), bool),  # type: ignore[attr-defined]
    )
    y = binarize([list(r["tags"]) for r in rows], labels)  # type: ignore[call-overload]
    y_val = binarize([list(r["tags"]) for r in val_rows], labels)  # type: ignore[call-overload]
    good = fit_slot_regression(channel.index.featurizer, texts, y, labels, ["category#0"])
    # the same regression fitted on shuffled categories: it votes against the neighbours
    cats = [j for j, label in enumerate(labels) if label.startswith("category:")]
    shuffled = y.copy()
    shuffled[:, cats] = y[np.random.default_rng(0).permutation(len(y))][:, cats]
    bad = fit_slot_regression(channel.index.featurizer, texts, shuffled, labels, ["category#0"])
    slots = ["brand#0", "category#0"]
    kept = check_slot_regressions(dataclasses.replace(channel, slots=good), val_texts, y_val, labels, slots, 13)
    dropped = check_slot_regressions(dataclasses.replace(channel, slots=bad), val_texts, y_val, labels, slots, 13)
    assert kept.slots is not None and dropped.slots is None
