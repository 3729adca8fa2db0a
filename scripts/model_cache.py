"""Train-or-reuse a small real model for the demo and the benchmarks.

A model directory is reused when its manifest verifies (every file's sha256); otherwise it is built
with the same `tagger train` / `tagger export` commands a user would run.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FLIPKART = SHARED_DATA / "flipkart-20k.jsonl"


def model_is_usable(model_dir: Path) -> bool:
    from worker.artifact import ArtifactError, load_manifest

    if not (model_dir / "manifest.json").is_file():
        return False
    try:
        load_manifest(model_dir, verify=True)
    except ArtifactError as exc:
        log.warning("rebuilding %s: %s", model_dir, exc)
        return False
    return True


def _tagger(*args: str) -> None:
    cmd = [sys.executable, "-m", "worker.cli", *args]
    log.info("$ tagger %s", " ".join(args))
    subprocess.run(cmd, check=True, cwd=REPO)


def ensure_model(work_dir: Path, *, data: Path = FLIPKART, max_minutes: float = 3.0) -> tuple[Path, Path]:
    """Return (run_dir, model_dir) under `work_dir`, training and exporting only when needed."""
    run_dir, model_dir = work_dir / "run", work_dir / "model"
    if model_is_usable(model_dir) and (run_dir / "tagger.json").is_file():
        log.info("reusing model %s", model_dir)
        return run_dir, model_dir
    if not data.is_file():
        raise FileNotFoundError(f"training data not found: {data} (expected ../shared/data beside the repo)")
    _tagger("train", "--data", str(data), "--out", str(run_dir), "--max-minutes", str(max_minutes))
    # --fp16 too: `make bench-gpu` serves the half-precision graph (a few more seconds of export).
    _tagger("export", "--checkpoint", str(run_dir), "--out", str(model_dir), "--int8", "--fp16")
    return run_dir, model_dir
