"""Regenerate the README's settings table from the settings model (`make docs`; a test checks it)."""

from __future__ import annotations

import sys
from pathlib import Path

from worker.settings import iter_fields

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def render_table() -> str:
    lines = ["| Variable | Type | Default | Description |", "|---|---|---|---|"]
    for env, type_name, default, desc in iter_fields():
        shown = f"`{default}`" if default else ""
        lines.append(f"| `{env}` | {type_name} | {shown} | {desc.replace('|', '/')} |")
    return "\n".join(lines)


def render_readme(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{README}: markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render_table()}\n{END}{tail}"


def main() -> int:
    text = README.read_text()
    new = render_readme(text)
    if new != text:
        README.write_text(new)
        print(f"updated the settings table in {README}")
    else:
        print("settings table already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
