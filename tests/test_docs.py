"""Docs that must match the code: the README settings table and the exported JSON Schemas."""

from pathlib import Path

import pytest

from schemas.events import SCHEMA_DIR, render_schemas
from scripts.gen_docs import END, README, START, render_readme
from worker.settings import SettingsError, WorkerSettings, load_settings


def _documented() -> list[tuple[str, str]]:
    """(variable, default) of each row of the README table, read from the README itself."""
    table = README.read_text().split(START, 1)[1].split(END, 1)[0]
    rows = []
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((cells[0].strip("`"), cells[2].strip("`")))
    return rows


def test_readme_settings_table_is_up_to_date() -> None:
    text = README.read_text()
    assert render_readme(text) == text, "README settings table is stale: run `make docs`"


def test_every_documented_variable_sets_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Checked through the environment, the way an operator uses the table (not rebuilt from the
    # code that renders it): each documented name is read, and its documented default is the default.
    defaults = WorkerSettings()
    documented = _documented()
    fields = sum(len(type(getattr(defaults, section)).model_fields) for section in WorkerSettings.model_fields)
    assert len(documented) == fields, "a setting is missing from the README table"
    for env, default in documented:
        section, name = env.removeprefix("TAGGER_").lower().split("__")
        if default:
            monkeypatch.setenv(env, default)
            loaded = load_settings()
            assert getattr(getattr(loaded, section), name) == getattr(getattr(defaults, section), name), env
            monkeypatch.delenv(env)
    monkeypatch.setenv("TAGGER_BATCHING__MAX_ITEMS", "many")
    with pytest.raises(SettingsError, match="TAGGER_BATCHING__MAX_ITEMS"):
        load_settings()


def test_json_schemas_match_the_models() -> None:
    for name, text in render_schemas().items():
        path: Path = SCHEMA_DIR / name
        assert path.is_file() and path.read_text() == text, f"{path} is stale: run `python -m schemas.events`"


def test_readme_names_the_commands_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README.read_text() and "make demo" in README.read_text()


def test_dead_letter_fields_added_later_are_optional_both_ways() -> None:
    # Consumers built on the first contract must keep parsing, and its dead letters must still parse.
    import json

    from schemas.events import DeadLetter

    schema = json.loads((SCHEMA_DIR / "dead_letter.schema.json").read_text())
    first = ["error_kind", "error_message", "topic", "partition", "offset", "value_b64", "value_size"]
    first.append("dead_lettered_at")
    assert sorted(schema["required"]) == sorted(first)
    old = {"error_kind": "not_json", "error_message": "m", "topic": "t", "partition": 0, "offset": 1,
           "value_b64": "", "value_size": 0, "dead_lettered_at": "2026-11-30T12:00:00Z"}  # fmt: skip
    dl = DeadLetter.model_validate(old)
    assert not dl.truncated and dl.value_sha256 is None
