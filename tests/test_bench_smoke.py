"""`python -m bench.run --smoke` on the tiny model: the whole benchmark path runs and reports.

No timing targets are asserted (shared CI cores make them meaningless); only that every required
number is there, finite and positive.
"""

import json
import math
from pathlib import Path

import pytest

from bench import run
from bench.report import REQUIRED_KEYS
from tests.model_factory import make_rows


def test_bench_smoke(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, data = tmp_path / "bench.json", tmp_path / "products.jsonl"
    # Synthetic titles written here: the bench itself imports nothing from tests/.
    data.write_text("".join(json.dumps(row) + "\n" for row in make_rows(2000, seed=3)))
    argv = ["--smoke", "--model", str(tiny_model), "--data", str(data), "--json-out", str(out)]
    assert run.main(argv) == 0
    stdout = capsys.readouterr().out
    last = stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert result == json.loads(out.read_text())
    assert "| worker, full load" in stdout  # the table came first
    for key in REQUIRED_KEYS:
        value = result[key]
        assert isinstance(value, int | float) and math.isfinite(value), (key, value)
        if key != "io_overhead_share":  # negative when the worker beats its engine run alone (two batch threads)
            assert value > 0, (key, value)
    assert result["io_overhead_share"] < 1
    assert len(result["targets_met"]) == 6 and all(isinstance(v, bool) for v in result["targets_met"].values())
    for key in ("p50_ms_full_load", "p99_ms_full_load", "p50_ms_half_load", "p95_ms_half_load"):
        assert math.isfinite(result[key]) and result[key] >= 0, key
    assert set(result["cache_hit_by_client"]) == {"kafka-python", "confluent"}
    for client, replay in result["cache_hit_by_client"].items():
        assert replay["client"] == client
        assert replay["cached"] == replay["events"] > 0, client  # each replay was all hits
        assert replay["missing"] == 0, client
    assert result["batched"]["events"] >= 64  # the batched competitor consumed its whole backlog
    assert result["settings"]["precision"] == "int8"  # the worker's CPU default, the artifact has int8
    assert "| batched competitor" in stdout
    assert result["full_load"]["missing"] == 0
    assert set(result["breakdown"]["stages"]) >= {"poll", "cache_get", "inference", "produce", "commit"}


def test_hit_costs_runs_every_step_on_real_entries(tiny_model: Path) -> None:
    from bench.hit_costs import hit_costs

    rows = make_rows(40, seed=5)
    products = [
        {"title": str(r["title"]), **({"description": str(r["description"])} if r.get("description") else {})}
        for r in rows
    ]
    result = hit_costs(tiny_model, products, repeat=1)
    assert result["hits"] == 40 and result["entry_bytes_mean"] > 0
    assert len(result["us_per_hit"]) == 6 and all(v > 0 for v in result["us_per_hit"].values())
