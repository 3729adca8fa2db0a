"""A small real model for the fault suite, built once with the user-facing CLI and cached.

The suite needs a model that really runs ONNX Runtime, not a good one: MiniLM fine-tuned for a
few dozen steps on a slice of the Flipkart file, exported with `tagger export`. The artifact is
reused while its manifest verifies.
"""

from __future__ import annotations

import logging
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
