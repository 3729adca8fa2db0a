"""Span alignment and BIO decoding, including CJK and mixed-script titles."""

import pytest

from worker.spans import IGNORE, Span, align, bio_labels, decode, find_span, known_spellings, merge


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("Puma Men's Running Shoes", "puma", (0, 4)),
        ("Pumatic Pumps by Puma", "Puma", (17, 21)),  # not inside "Pumatic"
        ("华为手机 Mate 60 黑色", "华为", (0, 2)),  # CJK: no word boundaries needed
        ("Apple iPhone 15 苹果手机 128GB", "苹果", (16, 18)),
        ("Apple iPhone 15 苹果手机", "iPhone 15", (6, 15)),
        ("Nike shoes", "Adidas", None),
        ("anything", "   ", None),
    ],
)
def test_find_span(text: str, value: str, expected: tuple[int, int] | None) -> None:
    assert find_span(text, value) == expected


def test_align_keeps_longest_of_overlapping_spans_and_skips_other_facets() -> None:
    text = "Samsung Galaxy S21 5G smartphone"
    spans = align(text, ["brand:Samsung", "product:Samsung Galaxy S21", "category:Phones"], ["brand", "product"])
    assert spans == [Span(0, 18, "product")]


def test_bio_labels_from_offsets_wordpiece_style() -> None:
    # [CLS] puma men ##s shoes [SEP]
    offsets = [(0, 0), (0, 4), (5, 8), (8, 9), (10, 15), (0, 0)]
    spans = [Span(0, 4, "brand"), Span(10, 15, "product")]
    labels = bio_labels(offsets, spans, ["brand", "product"])
    assert labels == [IGNORE, 1, 0, 0, 3, IGNORE]


def test_bio_labels_multi_token_cjk_span() -> None:
    text = "华为手机黑色"
    offsets = [(0, 0), (0, 2), (2, 4), (4, 6), (0, 0)]  # <s> 华为 手机 黑色 </s>
    spans = align(text, ["产品:华为手机", "颜色分类:黑色"], ["产品", "颜色分类"])
    assert bio_labels(offsets, spans, ["产品", "颜色分类"]) == [IGNORE, 1, 2, 3, IGNORE]


def test_decode_roundtrip_and_scores() -> None:
    text = "Apple iPhone 15 苹果手机"
    offsets = [(0, 0), (0, 5), (6, 12), (13, 15), (16, 18), (18, 20), (0, 0)]
    facets = ["brand", "product"]
    labels = [0, 1, 3, 4, 1, 0, 0]
    probs = [1.0, 0.9, 0.8, 0.6, 0.7, 0.99, 1.0]
    got = decode(text, offsets, labels, probs, facets)
    assert got == [("brand:Apple", 0.9), ("product:iPhone 15", pytest.approx(0.7)), ("brand:苹果", 0.7)]


def test_bio_then_decode_recovers_the_spans() -> None:
    text = "Alisha Solid Women's Cycling Shorts"
    offsets = [(0, 0), (0, 6), (7, 12), (13, 18), (18, 20), (21, 28), (29, 35), (0, 0)]
    spans = align(text, ["brand:Alisha", "type:Cycling Shorts"], ["brand", "type"])
    labels = bio_labels(offsets, spans, ["brand", "type"])
    decoded = decode(text, offsets, [max(0, x) for x in labels], [1.0] * len(labels), ["brand", "type"])
    assert [t for t, _ in decoded] == ["brand:Alisha", "type:Cycling Shorts"]


def test_merge_dedupes_case_insensitively_with_vocabulary_spelling() -> None:
    merged = merge(
        [("brand:Alisha", 0.6), ("category:Clothing", 0.9)],
        [("brand:ALISHA", 0.8), ("brand:Zed", 0.5)],
        {"brand:alisha": "brand:Alisha"},
    )
    assert merged == [("category:Clothing", 0.9), ("brand:Alisha", 0.8), ("brand:Zed", 0.5)]


def test_alternatives_match_and_map_back_to_the_vocabulary_label() -> None:
    from worker.spans import known_spellings

    text = "缤肌沁润免蒸护理发膜"
    assert find_span(text, "pinkypinky/缤肌") == (0, 2)
    known = known_spellings(["品牌:pinkypinky/缤肌", "category:美妆洗护"])
    assert merge([], [("品牌:缤肌", 0.9)], known) == [("品牌:pinkypinky/缤肌", 0.9)]


def test_merge_keeps_a_classified_label_that_differs_from_another_only_in_case() -> None:
    labels = ["brand:DISNEY", "brand:Disney", "category:Toys"]
    known = known_spellings(labels)
    assert merge([("brand:DISNEY", 0.9)], [], known) == [("brand:DISNEY", 0.9)]
    # an extracted span still takes a vocabulary spelling, and one score per tag survives
    merged = merge([("brand:Disney", 0.6)], [("brand:disney", 0.8)], known)
    assert len(merged) == 1 and merged[0][1] == 0.8 and merged[0][0] in {"brand:DISNEY", "brand:Disney"}


def test_an_extracted_tag_spelled_as_a_label_keeps_that_spelling() -> None:
    labels = ["brand:ETTI", "brand:Etti"]
    known = known_spellings(labels)
    assert merge([], [("brand:ETTI", 0.9)], known, frozenset(labels)) == [("brand:ETTI", 0.9)]
    assert merge([], [("brand:etti", 0.9)], known, frozenset(labels))[0][0] in set(labels)
