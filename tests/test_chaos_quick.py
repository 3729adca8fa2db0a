"""`python -m bench.chaos --quick` end to end on the tiny model: real Tansu, a real redis-server,
real worker processes and the fault proxy. Slow (a few minutes); run with `make test-all`.

It asserts what the suite promises: the table and the final JSON line are printed, every quick
scenario reports its figures, and every scenario passes (nothing lost, no crash, recovered).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.chaos import __main__ as chaos
from bench.chaos.scenarios import QUICK_SET


@pytest.mark.slow
def test_chaos_quick(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = chaos.main(["--quick", "--model", str(tiny_model), "--logs", str(tmp_path / "logs")])
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert "| scenario | sent | tagged |" in out
    assert set(result["scenarios"]) == set(QUICK_SET)
    for name, figures in result["scenarios"].items():
        for key in ("sent", "tagged", "dead_lettered", "lost", "dup_diff_id", "recovery_s"):
            assert key in figures, (name, key)
        assert figures["sent"] > 0, name
    failed = {n: f["failed_checks"] for n, f in result["scenarios"].items() if not f["passed"]}
    assert not failed, f"scenarios failed (logs in {tmp_path / 'logs'}): {failed}"
    assert code == 0
