"""Real-data check (slow, `make test-all`): a short MiniLM run on the shared Flipkart data must
learn categories far above chance through the whole train -> export -> evaluate path."""

import json
from pathlib import Path

import pytest

from tests.model_factory import cli_args

FLIPKART = Path(__file__).resolve().parents[2] / "shared" / "data" / "flipkart-20k.jsonl"


@pytest.mark.slow
@pytest.mark.skipif(not FLIPKART.is_file(), reason="../shared/data is not beside the repo")
def test_short_real_training_learns_categories(tmp_path: Path) -> None:
    from exporter import data, evaluate, export, train

    data.run(cli_args(data, ["--data", str(FLIPKART), "--out", str(tmp_path / "data")]))
    train.train(
        cli_args(
            train,
            [
                "--data",
                str(tmp_path / "data" / "train.jsonl"),
                "--out",
                str(tmp_path / "run"),
                "--max-minutes",
                "3",
                "--epochs",
                "1",
            ],
        )
    )
    export.export(cli_args(export, ["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "model")]))
    out = tmp_path / "eval.json"
    evaluate.run(
        cli_args(
            evaluate,
            ["--model", str(tmp_path / "model"), "--data", str(tmp_path / "data" / "test.jsonl"), "--output", str(out)],
        )
    )
    report = json.loads(out.read_text())["model"]
    assert report["per_facet"]["category"]["f1"] > 0.8
    assert report["items"] == 4014  # the default split groups identical titles
