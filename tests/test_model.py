"""Model tests on a tiny model trained and exported by the real code (fixture `tiny_model`)."""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from exporter.export import ExportValidationError, check_parity
from exporter.metrics import choose_thresholds, report
from tests.model_factory import make_rows, train_args, write_jsonl
from worker.artifact import ArtifactError, load_manifest
from worker.contract import RunMeta, bucket, compose_text, default_taxonomy_version
from worker.engine import ProviderUnavailableError, TagEngine


def test_artifact_is_self_describing(tiny_model: Path) -> None:
    m = load_manifest(tiny_model)
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json"} <= set(m.files)
    assert {"lexical.json", "lexical.npz", "lexical_slots.npz", "candidates.json", "candidates.npz"} <= set(m.files)
    d = m.decisions
    assert m.opset == 17 and m.max_seq_len == 32 and len(m.labels) == len(d.thresholds) > 5
    assert all(":" in t for t in m.labels)
    assert m.metrics["parity"]["max_abs_logit_diff"] < 1e-4 and m.metrics["parity"]["tag_sets_equal"] == 1.0
    assert m.int8 is not None and 0 <= m.int8["decision_agreement"] <= 1
    assert d.threshold_strategy in {"per_tag", "per_facet"} and d.lexical and 0.0 <= d.encoder_weight <= 1.0
    # Every synthetic item has one category and one brand: both slots are single-valued.
    assert d.single_slots == ["brand#0", "category#0"]
    # Brands occur verbatim in the synthetic titles, categories never: "auto" picks brand only.
    assert d.extract_facets == ["brand"]
    # ... and the candidate-span extractor learns brand too (kept: it does not lower validation F1)
    assert d.candidate_facets == ["brand"]
    run = tiny_model.parent / "run"
    meta = RunMeta.model_validate_json((run / "tagger.json").read_text())
    assert meta.steps == 40 and meta.decisions == d
    # no --taxonomy-version given: the label-set hash, recorded by training and copied by export
    assert meta.taxonomy_version == m.taxonomy_version == default_taxonomy_version(m.labels)
    assert (run / "encoder" / "config.json").is_file()


def test_tampered_file_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    with (copy / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match="model.onnx: sha256 mismatch"):
        TagEngine(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json: missing"):
        load_manifest(copy)


def test_batch_scores_equal_one_at_a_time(tiny_model: Path) -> None:
    engine = TagEngine(tiny_model, max_items=8, max_tokens=256)
    texts = [compose_text(str(r["title"]), r.get("description")) for r in make_rows(40, seed=3)]  # type: ignore[arg-type]
    ids = engine.encode(texts)
    assert len({len(x) for x in ids}) > 3  # varied lengths: padding is really exercised
    batched = engine.scores(ids)
    single = np.vstack([engine.scores([x]) for x in ids])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_batched_tags_with_spans_equal_one_at_a_time(tiny_model: Path) -> None:
    engine = TagEngine(tiny_model, max_items=4, max_tokens=128)
    assert engine.extract_facets == ["brand"]
    texts = [compose_text(str(r["title"]), r.get("description")) for r in make_rows(24, seed=5)]  # type: ignore[arg-type]
    batched = engine.tag_texts(texts)
    single = [engine.tag_texts([t])[0] for t in texts]
    for a, b in zip(batched, single, strict=True):
        assert [t.tag for t in a] == [t.tag for t in b]
        np.testing.assert_allclose([t.score for t in a], [t.score for t in b], atol=1e-3)
    assert TagEngine(tiny_model, extract=False).extract_facets == []


def test_int8_model_serves_and_agrees(tiny_model: Path) -> None:
    fp32, int8 = TagEngine(tiny_model), TagEngine(tiny_model, int8=True)
    assert int8.model_version.endswith("-int8") and int8.model_version != fp32.model_version
    texts = [str(r["title"]) for r in make_rows(30, seed=4)]
    diff = np.abs(fp32.scores(fp32.encode(texts)) - int8.scores(int8.encode(texts)))
    assert diff.max() < 0.1


def test_missing_cuda_is_a_clear_error_unless_fallback(tiny_model: Path) -> None:
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        TagEngine(tiny_model, provider="cuda")
    engine = TagEngine(tiny_model, provider="cuda", allow_cpu_fallback=True)
    assert engine.provider == "CPUExecutionProvider"


def test_parity_check_lists_every_mismatch() -> None:
    ref = np.zeros((3, 2), dtype=np.float32)
    cand = ref.copy()
    cand[0, 1], cand[2, 0] = 0.5, -0.01
    with pytest.raises(ExportValidationError) as err:
        check_parity(ref, cand, ["a:x", "b:y"], atol=1e-3)
    assert "in 2 values" in str(err.value) and "item 0 'b:y'" in str(err.value) and "item 2 'a:x'" in str(err.value)
    assert check_parity(ref, ref + 1e-5, ["a:x", "b:y"], atol=1e-3) <= 1e-5


def test_bucketing_respects_limits() -> None:
    lengths = [5, 50, 7, 48, 6, 51]
    groups = bucket(lengths, max_items=2, max_tokens=200)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for g in groups:
        assert len(g) <= 2 and len(g) * max(lengths[i] for i in g) <= 200
    assert bucket([300], max_items=2, max_tokens=200) == [[0]], "an item over the budget still runs, alone"


def test_bucketing_keeps_short_texts_out_of_long_texts_padding() -> None:
    lengths = [12, 120, 10, 11, 118, 9] * 10  # titles mixed with title + description
    groups = bucket(lengths, max_items=64, max_tokens=8192, run_cost_tokens=32)
    long = [g for g in groups if max(lengths[i] for i in g) >= 118]
    assert len(long) == 1 and sorted(lengths[i] for i in long[0]) == [118] * 10 + [120] * 10
    assert sum(len(g) * max(lengths[i] for i in g) for g in groups) <= 40 * 12 + 20 * 120
    # one run when splitting would not pay for itself, or when every length is the same
    assert len(bucket([10, 12, 11, 13], 64, 8192, run_cost_tokens=32)) == 1
    assert len(bucket([40] * 64, 64, 8192, run_cost_tokens=0)) == 1
    # a fixed cost per run large enough (a GPU): one run for all of them
    assert len(bucket(lengths, 64, 8192, run_cost_tokens=10_000)) == 1


def test_threshold_strategies_are_compared() -> None:
    rng = np.random.default_rng(0)
    labels = ["a:1", "a:2", "b:1"]
    y = rng.random((200, 3)) < 0.3
    scores = np.clip(y * 0.6 + rng.random((200, 3)) * 0.5, 0, 1).astype(np.float32)
    strategy, th, comparison = choose_thresholds(scores, y, labels)
    assert strategy in comparison and set(comparison) == {"per_tag", "per_facet"}
    assert th.shape == (3,) and ((th > 0) & (th < 1)).all()


def test_report_counts_unknown_tags_as_misses() -> None:
    r = report([["a:1", "b:zzz"]], [["a:1"]])
    assert r["micro"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667}
    assert r["per_facet"]["b"]["recall"] == 0.0  # type: ignore[index]


def test_predict_and_evaluate_on_a_small_file(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from exporter import evaluate
    from worker import predict

    rows = make_rows(60, seed=9)
    data = write_jsonl(tmp_path / "eval.jsonl", rows)
    preds = tmp_path / "preds.jsonl"
    args = argparse.Namespace(model=tiny_model, input=data, output=preds, int8=False, batch_size=16, provider="cpu")
    assert predict.run(args) == 0
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [x["id"] for x in lines] == [r["id"] for r in rows]
    engine = TagEngine(tiny_model)
    for line in lines:
        scores = [t["score"] for t in line["tags"]]
        assert scores == sorted(scores, reverse=True)
        for t in line["tags"]:
            if t["tag"] in engine.labels:  # classified: over its threshold
                assert t["score"] >= engine.decider.thresholds[engine.labels.index(t["tag"])] - 1e-4
            else:  # extracted from the title by the span head
                assert t["tag"].partition(":")[0] in engine.extract_facets

    capsys.readouterr()
    out = tmp_path / "report.json"
    args = argparse.Namespace(
        model=tiny_model, data=data, baseline_train=tiny_model.parent / "train.jsonl", int8=False, both=True, output=out
    )
    assert evaluate.run(args) == 0
    rep = json.loads(out.read_text())
    assert set(rep) == {"model", "model_int8", "tfidf_baseline", "model_classifier_only", "model_int8_classifier_only"}
    for part in rep.values():
        assert 0 <= part["micro"]["f1"] <= 1 and {"brand", "category"} <= set(part["per_facet"])
    # The synthetic titles name brand and category outright: the baseline must nail them.
    assert rep["tfidf_baseline"]["micro"]["f1"] > 0.9


def test_training_is_deterministic_for_a_seed(tiny_model: Path, tmp_path: Path) -> None:
    import torch

    from exporter import train

    base = tiny_model.parent / "base"
    data = tiny_model.parent / "train.jsonl"
    heads = []
    for name in ("a", "b"):
        train.train(train_args(data, tmp_path / name, base, "--max-steps", "6", "--epochs", "1"))
        heads.append(torch.load(tmp_path / name / "head.pt", weights_only=True))
    for part in heads[0]:
        for k in heads[0][part]:
            assert torch.equal(heads[0][part][k], heads[1][part][k])


def test_intra_op_threads_do_not_spin_unless_asked(tiny_model: Path) -> None:
    def spinning(engine: TagEngine) -> str:
        return str(engine.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning"))

    assert spinning(TagEngine(tiny_model)) == "0"
    assert spinning(TagEngine(tiny_model, intra_op_spinning=True)) == "1"
