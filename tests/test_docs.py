"""Docs that must match the code: the README settings table and the exported JSON Schemas."""

from pathlib import Path

from schemas.events import SCHEMA_DIR, render_schemas
from scripts.gen_docs import README, render_readme, render_table
from worker.settings import iter_fields


def test_readme_settings_table_is_generated_from_the_model() -> None:
    text = README.read_text()
    assert render_readme(text) == text, "README settings table is stale: run `make docs`"
    for env, *_ in iter_fields():
        assert f"`{env}`" in render_table()


def test_json_schemas_match_the_models() -> None:
    for name, text in render_schemas().items():
        path: Path = SCHEMA_DIR / name
        assert path.is_file() and path.read_text() == text, f"{path} is stale: run `python -m schemas.events`"


def test_readme_names_the_commands_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README.read_text() and "make demo" in README.read_text()
