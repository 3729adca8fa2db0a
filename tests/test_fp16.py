"""`tagger export --fp16` on the tiny model: a half-precision graph, validated against fp32, listed in
the manifest, served by the engine (on the CPU provider here: no GPU on these machines)."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter import export
from tests.model_factory import cli_args, make_rows
from worker.artifact import load_manifest
from worker.contract import compose_text
from worker.engine import TagEngine


def _export(run_dir: Path, out: Path, *extra: str) -> None:
    argv = ["--checkpoint", str(run_dir), "--out", str(out), "--parity-items", "64", "--fp16", *extra]
    export.export(cli_args(export, argv))


def _float16_weights(path: Path) -> int:
    return sum(1 for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)


def test_fp16_export_round_trip(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    _export(tiny_model.parent / "run", out)
    manifest = load_manifest(out)  # verifies every hash, model.fp16.onnx included
    assert "model.fp16.onnx" in manifest.files
    assert _float16_weights(out / "model.fp16.onnx") > 10  # really half precision, not a copy
    info = manifest.fp16
    assert info is not None and info["items"] > 0
    assert 0 < info["max_abs_logit_diff"] <= info["atol"]
    assert info["decision_agreement"] >= 0.999

    texts = [compose_text(str(r["title"]), r.get("description")) for r in make_rows(40, seed=9)]  # type: ignore[arg-type]
    fp32, fp16 = TagEngine(out), TagEngine(out, precision="fp16")
    assert fp16.model_version == manifest.model_version + "-fp16"  # its own cache keys
    s32, s16 = fp32.scores(fp32.encode(texts)), fp16.scores(fp16.encode(texts))
    assert s16.dtype == np.float32  # float32 I/O: callers are unchanged
    assert 0 < np.abs(s32 - s16).max() < 0.02
    assert [[t.tag for t in x] for x in fp16.tag_texts(texts)] == [[t.tag for t in x] for x in fp32.tag_texts(texts)]

    bound = TagEngine(out, precision="fp16", io_binding=True)  # the CUDA feed path, exercised on CPU
    assert bound.io_binding and not fp16.io_binding
    np.testing.assert_allclose(bound.scores(bound.encode(texts)), s16, atol=1e-6)


def test_fp16_beyond_tolerance_fails_and_keeps_the_old_model(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("the model that was here")
    with pytest.raises(export.ExportValidationError, match=r"fp16 output differs from fp32 beyond atol=1e-09"):
        _export(tiny_model.parent / "run", out, "--fp16-atol", "1e-9")
    assert (out / "keep.txt").read_text() == "the model that was here"
    assert not list(tmp_path.glob(".model.staging-*"))


def test_serving_fp16_needs_the_graph(tiny_model: Path) -> None:
    from worker.artifact import ArtifactError

    with pytest.raises(ArtifactError, match="export with --fp16"):
        TagEngine(tiny_model, precision="fp16")
