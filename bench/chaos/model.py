"""A small real model for the fault suite, built once with the user-facing CLI and cached.

The suite needs a model that really runs ONNX Runtime, not a good one: MiniLM fine-tuned for a
few dozen steps on a slice of the Flipkart file, exported with `tagger export`. The artifact is
reused while its manifest verifies.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

from scripts.model_cache import FLIPKART, REPO, model_is_usable

log = logging.getLogger(__name__)

CHAOS_MODEL_DIR = REPO / "runs" / "chaos"
TRAIN_ROWS = 2_000
TRAIN_STEPS = 40


def _tagger(*args: str) -> None:
    log.info("$ tagger %s", " ".join(args))
    subprocess.run([sys.executable, "-m", "worker.cli", *args], check=True, cwd=REPO)


def ensure_chaos_model(work_dir: Path = CHAOS_MODEL_DIR, data: Path = FLIPKART) -> Path:
    """The cached model directory, trained and exported first when missing or not verifying."""
    model_dir = work_dir / "model"
    if model_is_usable(model_dir):
        return model_dir
    if not data.is_file():
        raise FileNotFoundError(f"training data not found: {data}")
    work_dir.mkdir(parents=True, exist_ok=True)
    train = work_dir / "train.jsonl"
    with data.open(encoding="utf-8") as src, train.open("w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= TRAIN_ROWS:
                break
            dst.write(line)
    run_dir = work_dir / "run"
    _tagger(
        "train", "--data", str(train), "--out", str(run_dir), "--max-steps", str(TRAIN_STEPS),
        "--epochs", "1", "--batch-size", "16", "--max-seq-len", "32", "--extract-facets", "none",
    )  # fmt: skip
    _tagger("export", "--checkpoint", str(run_dir), "--out", str(model_dir), "--parity-items", "32")
    return model_dir


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(ensure_chaos_model())


POISON_WORD = "poison"  # one WordPiece token in the MiniLM vocabulary; absent from the Flipkart file


def poisoned_artifact(model_dir: Path, word: str = POISON_WORD) -> Path:
    """A copy of `model_dir` whose ONNX graph fails at run time on any batch holding `word`'s token.

    A guard is spliced in front of the `logits` output: `Gather(table[1], any(ids == poison) * 10**6)`
    added to the logits. Without the token it reads table[0] = 0 and the scores are unchanged; with it
    the index is out of bounds and ONNX Runtime raises (INVALID_ARGUMENT), exactly like a real
    inference failure, with no test hook in the worker. The manifest is rewritten (new hashes and
    model version) so the copy loads with hash verification on.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer

    from worker.artifact import load_manifest, write_manifest

    out = model_dir.parent / f"{model_dir.name}-poisoned-{word}"
    if model_is_usable(out):
        return out
    manifest = load_manifest(model_dir, verify=True)
    token_id = Tokenizer.from_file(str(model_dir / "tokenizer.json")).token_to_id(word)
    if token_id is None:
        raise ValueError(f"{word!r} is not one token in {model_dir}'s vocabulary")
    tmp = model_dir.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    (tmp / "manifest.json").unlink()
    (tmp / "model.int8.onnx").unlink(missing_ok=True)  # the scenario serves fp32 only

    m = onnx.load(str(tmp / "model.onnx"))
    g = m.graph
    producer = next(n for n in g.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "chaos_logits_raw"
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(token_id, dtype=np.int64), "chaos_poison_id"),
            numpy_helper.from_array(np.array(1_000_000, dtype=np.float32), "chaos_far"),
            numpy_helper.from_array(np.zeros([1], dtype=np.float32), "chaos_table"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Equal", ["input_ids", "chaos_poison_id"], ["chaos_hit"]),
            helper.make_node("Cast", ["chaos_hit"], ["chaos_hit_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", ["chaos_hit_f"], ["chaos_any"], keepdims=0),
            helper.make_node("Mul", ["chaos_any", "chaos_far"], ["chaos_index_f"]),
            helper.make_node("Cast", ["chaos_index_f"], ["chaos_index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["chaos_table", "chaos_index"], ["chaos_zero"], axis=0),
            helper.make_node("Add", ["chaos_logits_raw", "chaos_zero"], ["logits"]),
        ]
    )
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp / "model.onnx"))
    # The manifest's own field values (nested models stay models: write_manifest reads `decisions`).
    derived = {"model_version", "files", "int8"}
    fields = {k: getattr(manifest, k) for k in type(manifest).model_fields if k not in derived}
    write_manifest(tmp, **fields)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
