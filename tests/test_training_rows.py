from pathlib import Path

import pytest

from schemas.training import load_rows


def test_bad_rows_are_reported_with_line_numbers_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(
        b'{"id": "a", "title": "Red shirt", "tags": ["category:Clothing"]}\n'
        b"not json\n"
        b"\n"
        b'{"id": "b", "title": "   ", "tags": []}\n'
        b'{"id": "c", "title": "Blue shoe", "tags": ["no-facet"]}\n'
        b'\xff{"id": "d"}\n'
        b'{"id": "e", "title": "Green hat", "description": "wool", "tags": ["brand:X", "brand:X"], "extra": 1}\n'
        b"[1]\n"
    )
    result = load_rows(path)
    assert [r.id for r in result.rows] == ["a", "e"]
    assert result.rows[1].tags == ["brand:X"] and result.rows[1].description == "wool"
    by_line = {e.line: e.message for e in result.errors}
    assert sorted(by_line) == [2, 4, 5, 6, 8]
    assert "malformed JSON" in by_line[2]
    assert "title" in by_line[4]
    assert "facet:value" in by_line[5]
    assert "UTF-8" in by_line[6]
    assert "object" in by_line[8]
    assert result.summary == "2 rows loaded, 5 bad rows skipped"
    assert str(result.errors[0]).startswith(f"{path}:2:")


def test_shared_data_format_loads() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "openbg-zh-1k.jsonl"
    if not shared.is_file():
        pytest.skip(f"{shared} is not on this machine")
    result = load_rows(shared)
    assert len(result.rows) > 900 and not result.errors
