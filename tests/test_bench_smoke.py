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
        if key != "io_overhead_share":  # the worker can beat its engine run alone only by noise
            assert value > 0, (key, value)
    assert result["io_overhead_share"] < 1
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
