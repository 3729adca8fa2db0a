"""The self-describing model artifact: `model.onnx` (+ `model.int8.onnx`), tokenizer files and
`manifest.json` (version, base model, labels, thresholds, opset, max length, sha256 of every file,
validation metrics). Loading verifies the hashes so a tampered or half-copied model never serves.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker.contract import Decisions, Manifest

MANIFEST = "manifest.json"


class ArtifactError(Exception):
    """The model directory is missing, malformed or does not match its manifest."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_version_of(files: dict[str, str], decisions: Decisions) -> str:
    """Deterministic version: same files and decision rules -> same version."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(files.items())).encode())
    h.update(decisions.model_dump_json().encode())
    return h.hexdigest()[:16]


def write_manifest(model_dir: Path, **fields: Any) -> Manifest:
    """Hash every file in `model_dir` and write the manifest; returns it."""
    files = {
        p.relative_to(model_dir).as_posix(): sha256_file(p)
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    decisions = Decisions.model_validate(fields["decisions"])  # a Decisions or its dict (a re-written manifest)
    version = model_version_of(files, decisions)
    manifest = Manifest(model_version=version, files=files, **fields)
    (model_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def load_manifest(model_dir: str | Path, *, verify: bool = True) -> Manifest:
    """Read and validate `manifest.json`; with `verify`, every listed file must match its sha256."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{model_dir}: no {MANIFEST} (is this a model directory from `tagger export`?)")
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ArtifactError(f"{path}: invalid manifest: {exc}") from None
    if verify:
        problems = []
        for rel, digest in manifest.files.items():
            f = model_dir / rel
            if not f.is_file():
                problems.append(f"{rel}: missing")
            elif sha256_file(f) != digest:
                problems.append(f"{rel}: sha256 mismatch (file changed since export)")
        if problems:
            raise ArtifactError(f"{model_dir}: artifact does not match its manifest: " + "; ".join(problems))
    return manifest
